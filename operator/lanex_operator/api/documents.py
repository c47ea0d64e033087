"""LaneExperiment documents: a validated spec back to JSON, whole objects, and how two specs differ.

Why it exists: the Python API, `lanex submit` and `lanex snapshots restore --cluster` all turn specs
into the documents the API server stores and compare what they submit with what is there; one set
of functions keeps them agreeing. Pure: models in, dicts out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from lanex_operator.api.models import (
    API_VERSION,
    DATASET_SOURCES,
    KIND,
    InvalidSpecError,
    LaneExperimentSpec,
    parse_spec,
)


def spec_document(spec: LaneExperimentSpec, defaults: bool = False) -> dict[str, Any]:
    """The spec as the API serves it: camelCase, only the fields set unless `defaults`."""
    return spec.model_dump(mode="json", by_alias=True, exclude_unset=not defaults)


def experiment_document(metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """A LaneExperiment object, as created on the cluster or written to a file."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": dict(metadata), "spec": dict(spec)}


def parsed_spec(obj: Mapping[str, Any]) -> Optional[LaneExperimentSpec]:
    """The validated spec of a LaneExperiment read from the cluster, None when it is invalid."""
    try:
        return parse_spec(obj.get("spec") or {})
    except InvalidSpecError:
        return None


def spec_differences(first: Any, second: Any, path: str = "spec") -> list[str]:
    """Dotted paths where two (defaulted) specs differ."""
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        found: list[str] = []
        for key in sorted(set(first) | set(second)):
            found += spec_differences(first.get(key), second.get(key), f"{path}.{key}")
        return found
    return [] if first == second else [path]


def spec_conflict(existing: Mapping[str, Any], spec: LaneExperimentSpec) -> list[str]:
    """Paths where the cluster's experiment differs from `spec`, defaults included (empty: the same)."""
    theirs = parsed_spec(existing)
    if theirs is None:
        return ["spec"]
    return spec_differences(spec_document(theirs, defaults=True), spec_document(spec, defaults=True))


def without_source(dataset: Optional[Mapping[str, Any]], *also: str) -> dict[str, Any]:
    """The dataset fields that stay when its source is replaced (and those in `also` dropped too)."""
    return {key: value for key, value in (dataset or {}).items() if key not in DATASET_SOURCES + also}
