"""Restoring a VolumeSnapshot on a cluster: the spec of an experiment that trains on it, or a new PVC.

Why it exists: a snapshot holds a prepared dataset (and a run's model and logs); the next experiment
should start from it without knowing what made it. The source experiment's spec is kept but for
its data source, and the storage class is the one asked for, else the source experiment's, else
that of the claim the snapshot was taken of.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from lanex_operator.api.documents import parsed_spec, spec_document, without_source
from lanex_operator.api.models import InvalidSpecError, parse_spec
from lanex_operator.client.cluster import ClusterClient, ClusterError
from lanex_operator.controller.builders import EXPERIMENT_LABEL, restore_pvc_for
from lanex_operator.plan.steps import plan_for


def restore_spec(cluster: ClusterClient, snapshot: Mapping[str, Any],
                 storage_class: Optional[str]) -> tuple[str, dict[str, Any]]:
    """(source experiment name or "", the spec of an experiment whose dataset restores `snapshot`)."""
    name = snapshot["metadata"]["name"]
    source = (snapshot["metadata"].get("labels") or {}).get("lanex.dev/experiment") or ""
    experiment = cluster.find_experiment(source) if source else None
    parsed = parsed_spec(experiment) if experiment is not None else None
    spec = spec_document(parsed) if parsed is not None else {}
    dataset = without_source(spec.get("dataset"), "prepareBackoffLimit")
    dataset["fromSnapshot"] = {"snapshotName": name}
    if storage_class:
        dataset["storageClassName"] = storage_class
    elif "storageClassName" not in dataset:
        claim_name = ((snapshot.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
        claim = cluster.get_claim(claim_name) if claim_name else None
        klass = ((claim or {}).get("spec") or {}).get("storageClassName")
        if not klass:
            raise InvalidSpecError(f"cannot tell the storage class for a restore of volumesnapshot "
                                   f"{cluster.namespace}/{name} (its experiment and source PVC are gone): "
                                   f"pass --storage-class")
        dataset["storageClassName"] = klass
    spec["dataset"] = dataset
    return source, spec


def restore_claim(cluster: ClusterClient, snapshot: Mapping[str, Any], to: str,
                  storage_class: Optional[str]) -> dict[str, Any]:
    """The PVC `to` whose dataSource is `snapshot`, as the operator's builder makes a restore claim; it
    belongs to the user, not to an experiment. ClusterError when the snapshot is not ready to use."""
    name = snapshot["metadata"]["name"]
    source, spec_doc = restore_spec(cluster, snapshot, storage_class)
    status = snapshot.get("status") or {}
    if not status.get("readyToUse"):
        error = (status.get("error") or {}).get("message")
        raise ClusterError(f"volumesnapshot {cluster.namespace}/{name} is not ready to use"
                           + (f": {error}" if error else " yet"))
    spec = parse_spec(spec_doc)
    plan_name = source or "restore"
    plan = plan_for(plan_name, cluster.namespace, spec)
    claim = restore_pvc_for({"name": plan_name, "namespace": cluster.namespace}, spec, plan,
                            restore_size=status.get("restoreSize"))
    # No experiment label, so neither the operator nor retention ever treats it as a child.
    claim["metadata"]["name"] = to
    claim["metadata"]["labels"].pop(EXPERIMENT_LABEL, None)
    claim["metadata"]["labels"]["app.kubernetes.io/component"] = "restore"
    claim["metadata"]["annotations"]["lanex.dev/restored-from"] = name
    if source:
        claim["metadata"]["annotations"]["lanex.dev/source-experiment"] = source
    return claim
