"""Reading LaneSweep documents and files (`lanex run`, `lanex submit`), and telling sweeps from experiments.

Errors name the file and the field, like the experiment's (`api.files`), so one YAML file of
either kind fails the same clear way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from lanex_operator.api.files import ExperimentFileError, read_document
from lanex_operator.api.models import API_VERSION, KIND, InvalidSpecError
from lanex_operator.api.sweep import SWEEP_KIND, LaneSweepSpec, check_sweep_name, parse_sweep_spec

_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec")


def document_kind(document: Any) -> str:
    """`LaneSweep` or `LaneExperiment` (the default: an experiment file's errors are the familiar ones)."""
    return SWEEP_KIND if isinstance(document, dict) and document.get("kind") == SWEEP_KIND else KIND


def load_sweep_document(document: Any, source: str = "<document>") -> tuple[dict[str, Any], LaneSweepSpec]:
    """Validate one parsed LaneSweep document: (metadata, spec); errors are prefixed with `source`."""
    if not isinstance(document, dict):
        raise ExperimentFileError(f"{source}: expected a LaneSweep mapping, got {type(document).__name__}")
    problems = [f"{key}: unknown top-level field" for key in document if key not in _TOP_LEVEL]
    if document.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION} (got {document.get('apiVersion')!r})")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        problems.append("metadata: required, a mapping with at least a name")
        metadata = {}
    else:
        try:
            check_sweep_name(metadata.get("name"))
        except InvalidSpecError as error:
            problems.extend(error.problems)
    spec = None
    if "spec" not in document:
        problems.append("spec: required field is missing")
    else:
        try:
            spec = parse_sweep_spec(document["spec"])
        except InvalidSpecError as error:
            problems.extend(error.problems)
    if problems or spec is None:
        located = [f"{source}: {problem}" for problem in problems]
        raise ExperimentFileError("; ".join(located), located)
    return dict(metadata), spec


def load_sweep_file(path: Union[str, Path]) -> tuple[dict[str, Any], LaneSweepSpec]:
    """Read a YAML file holding one LaneSweep: (metadata, validated spec)."""
    return load_sweep_document(read_document(path), str(path))
