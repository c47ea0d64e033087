"""What deleting a LaneExperiment removes, and what it keeps.

Why it exists: deletion is where data is lost, so the rules live in one small place. The owned
Job and MPIJob go with the experiment (owner references, garbage collector). The dataset PVC is
owned only when `retention.dataset` is Delete; a user's existing claim is never touched. Snapshots
never carry owner references: with `retention.snapshots: Delete` they are deleted here, one by one,
except a snapshot that a PVC still names as its dataSource, which is kept and reported.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from lanex_operator.api.models import InvalidSpecError, LaneExperimentSpec, parse_spec
from lanex_operator.controller.children import EXPERIMENT_LABEL, MPIJOB, PVC, SNAPSHOT
from lanex_operator.controller.kube import Kube, object_path

SPEC_ANNOTATION = "lanex.dev/spec"


@dataclasses.dataclass
class Released:
    """What the finalizer did, for the log and the Event."""

    deleted: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.deleted:
            parts.append("deleted " + ", ".join(self.deleted))
        if self.kept:
            parts.append("kept " + ", ".join(self.kept))
        return "; ".join(parts) or "nothing to release"


def retention_of(body: Mapping[str, Any], mpijob: Mapping[str, Any] | None) -> tuple[str, str, bool]:
    """(dataset policy, snapshots policy, lanex created the claim) from the spec; Retain when unreadable."""
    spec: LaneExperimentSpec | None = None
    try:
        spec = parse_spec(body.get("spec"))
    except InvalidSpecError:
        annotations = ((mpijob or {}).get("metadata") or {}).get("annotations") or {}
        if SPEC_ANNOTATION in annotations:
            try:
                spec = parse_spec(json.loads(annotations[SPEC_ANNOTATION]))
            except (ValueError, InvalidSpecError):
                spec = None
    if spec is None:
        return "Retain", "Retain", False
    return spec.retention.dataset, spec.retention.snapshots, spec.dataset.existing_claim is None


def snapshots_in_use(claims: list[Mapping[str, Any]]) -> dict[str, str]:
    """Snapshot name -> the PVC that names it as its dataSource (or dataSourceRef)."""
    used: dict[str, str] = {}
    for claim in claims:
        spec = claim.get("spec") or {}
        for source in (spec.get("dataSource"), spec.get("dataSourceRef")):
            if source and source.get("kind") == "VolumeSnapshot" and source.get("name"):
                used[source["name"]] = (claim.get("metadata") or {}).get("name", "?")
    return used


async def release(kube: Kube, body: Mapping[str, Any]) -> Released:
    """Apply the experiment's retention policy; safe to run again after a partial run."""
    meta, status = body["metadata"], body.get("status") or {}
    namespace, name = meta["namespace"], meta["name"]
    children = status.get("children") or {}
    released = Released()
    mpijob = None
    if children.get("mpiJob"):
        mpijob = await kube.get_or_none(object_path(MPIJOB.api_version, MPIJOB.plural, namespace, children["mpiJob"]))
    dataset_policy, snapshot_policy, created_claim = retention_of(body, mpijob)

    claim = children.get("datasetClaim")
    if claim and created_claim:
        if dataset_policy == "Delete":
            if await kube.delete(object_path(PVC.api_version, PVC.plural, namespace, claim)) is not None:
                released.deleted.append(f"PersistentVolumeClaim {claim}")
        else:
            released.kept.append(f"PersistentVolumeClaim {claim} (retention.dataset: Retain)")

    snapshots = await kube.list(object_path(SNAPSHOT.api_version, SNAPSHOT.plural, namespace),
                                label_selector=f"{EXPERIMENT_LABEL}={name}")
    if snapshot_policy != "Delete":
        released.kept += [f"VolumeSnapshot {s['metadata']['name']} (retention.snapshots: Retain)" for s in snapshots]
        return released
    in_use = snapshots_in_use(await kube.list(object_path(PVC.api_version, PVC.plural, namespace))) if snapshots else {}
    for snapshot in snapshots:
        snapshot_name = snapshot["metadata"]["name"]
        if snapshot_name in in_use:
            released.kept.append(f"VolumeSnapshot {snapshot_name} (dataSource of PersistentVolumeClaim "
                                 f"{in_use[snapshot_name]})")
            continue
        await kube.delete(object_path(SNAPSHOT.api_version, SNAPSHOT.plural, namespace, snapshot_name))
        released.deleted.append(f"VolumeSnapshot {snapshot_name}")
    return released
