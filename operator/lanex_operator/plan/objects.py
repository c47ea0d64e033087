"""The child names of a LaneExperiment object as the API server serves it.

Why it exists: before the operator has written `status.children`, a reader (`lanex describe`, the
log and delete operations of the Python API) still knows what the children are called: the plan's
deterministic names. One function answers for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lanex_operator.api.documents import parsed_spec
from lanex_operator.plan.steps import child_names

# The children an experiment's finalizer or status names, besides its snapshots: (kind, status.children key).
DATASET_CHILD = ("PersistentVolumeClaim", "datasetClaim")
WORKLOAD_CHILDREN = (("Job", "prepareJob"), ("MPIJob", "mpiJob"))  # they go with it (owner references)


def recorded_children(obj: Mapping[str, Any]) -> dict[str, Any]:
    """`status.children` as the operator wrote it (empty before it did)."""
    return dict((obj.get("status") or {}).get("children") or {})


def children_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Child names from status, else the deterministic names of the plan (before the operator wrote them)."""
    spec = parsed_spec(obj)
    planned: dict[str, Any] = {}
    if spec is not None:
        names = child_names(obj["metadata"]["name"], spec)
        planned = {"datasetClaim": names.dataset_claim, "prepareJob": names.prepare_job, "mpiJob": names.mpijob}
    return {**planned, **{key: value for key, value in recorded_children(obj).items() if value}}
