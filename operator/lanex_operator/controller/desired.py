"""The children exactly as the operator creates them: the pure builders' manifests plus what the
reconciler adds to them (owner references where the experiment owns the child, the spec that
training started with on the MPIJob).

Why it exists: the reconciler and `lanex render` must build byte-identical objects, so the few
decisions made on top of the builders live here once. kopf.adopt is the operator's way to own a
child (owner reference, namespace, the experiment's labels); the retention rules say which children
it owns: the Job and the MPIJob always, the dataset PVC with `retention.dataset: Delete`, snapshots
never (`retention` deletes them one by one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Optional

import kopf

from lanex_operator.api.models import LaneExperimentSpec
from lanex_operator.controller import builders
from lanex_operator.plan.steps import ExperimentPlan

SPEC_ANNOTATION = "lanex.dev/spec"  # on the MPIJob: the spec training started with
GENERATION_ANNOTATION = "lanex.dev/generation"  # on the MPIJob: the experiment generation of that spec

Manifest = builders.Manifest


def dataset_claim(body: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan,
                  restore_size: Optional[str] = None) -> Manifest:
    """The dataset PVC (restored from `dataset.fromSnapshot` when set), owned with retention Delete."""
    meta = body["metadata"]
    if plan.dataset.restore_from is None:
        manifest = builders.pvc_for(meta, spec, plan)
    else:
        manifest = builders.restore_pvc_for(meta, spec, plan, restore_size)
    if spec.retention.dataset == "Delete":
        kopf.adopt(manifest, owner=dict(body))
    return manifest


def prepare_job(body: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan) -> Manifest:
    """The prepare Job, owned by the experiment."""
    manifest = builders.prepare_job_for(body["metadata"], spec, plan)
    kopf.adopt(manifest, owner=dict(body))
    return manifest


def training_job(body: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan, *,
                 launcher_creation_policy: bool = True) -> Manifest:
    """The MPIJob, annotated with the spec (and generation) training starts with, owned by the experiment."""
    manifest = builders.mpijob_for(body["metadata"], spec, plan, launcher_creation_policy=launcher_creation_policy)
    manifest["metadata"].setdefault("annotations", {}).update({
        SPEC_ANNOTATION: json.dumps(spec.model_dump(by_alias=True, mode="json"), sort_keys=True),
        GENERATION_ANNOTATION: str(body["metadata"].get("generation") or 1),
    })
    kopf.adopt(manifest, owner=dict(body))
    return manifest


def snapshot(body: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan, at: datetime) -> Manifest:
    """The result VolumeSnapshot (never owned: retention decides its fate)."""
    return builders.snapshot_for(body["metadata"], spec, plan, at)
