"""What deleting a LaneExperiment will keep and remove, told before it goes, and what the operator did.

Why it exists: deletion is where data is lost, so `lanex.Cluster.delete` says first what retention
keeps (the dataset claim, snapshots) and what goes with the experiment, by the operator's own rules
(`controller.retention`), and afterwards reads the operator's `Deleted` Event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from lanex_operator.client.cluster import ClusterClient
from lanex_operator.controller.retention import retention_of
from lanex_operator.plan.objects import WORKLOAD_CHILDREN, children_of, recorded_children


def retention_plan(obj: Mapping[str, Any], snapshots: Sequence[Mapping[str, Any]],
                   in_use: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(what deleting the experiment keeps, what it removes), from its spec, children and the
    snapshots that a PVC restores from (`in_use`: snapshot -> claim), as `retention.release` decides."""
    dataset_policy, snapshot_policy, created_claim = retention_of(obj, None)
    names, recorded = children_of(obj), recorded_children(obj)
    keeps, removes = [], []
    claim = names.get("datasetClaim")
    if claim and not created_claim:
        keeps.append(f"PersistentVolumeClaim {claim} (your existing claim)")
    elif claim and recorded.get("datasetClaim"):
        target = removes if dataset_policy == "Delete" else keeps
        target.append(f"PersistentVolumeClaim {claim} (retention.dataset: {dataset_policy})")
    for snapshot in snapshots:
        snap = snapshot["metadata"]["name"]
        if snapshot_policy == "Delete" and snap in in_use:
            keeps.append(f"VolumeSnapshot {snap} (dataSource of PersistentVolumeClaim {in_use[snap]})")
        else:
            target = removes if snapshot_policy == "Delete" else keeps
            target.append(f"VolumeSnapshot {snap} (retention.snapshots: {snapshot_policy})")
    removes += [f"{kind} {names[key]}" for kind, key in WORKLOAD_CHILDREN if recorded.get(key)]
    return keeps, removes


def deleted_event(cluster: ClusterClient, obj: Mapping[str, Any], patience: float = 3.0) -> Optional[str]:
    """The operator's `Deleted` Event about this experiment: what its finalizer actually did."""
    uid, name = obj["metadata"].get("uid"), obj["metadata"]["name"]
    deadline = time.monotonic() + patience
    while True:
        for event in cluster.list_events():
            involved = event.get("involvedObject") or {}
            same = involved.get("uid") == uid if involved.get("uid") else involved.get("name") == name
            if involved.get("kind") == "LaneExperiment" and event.get("reason") == "Deleted" and same:
                return str(event.get("message") or "")
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)  # Events are posted asynchronously, just before the finalizer goes
