"""Reading LaneExperiment YAML files (the local runner, `lanex submit` and the examples' tests).

Errors name the file and the field, so `lanex run bad.yaml` tells the user exactly what to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar, Union

from lanex_operator.api.models import (
    API_VERSION,
    KIND,
    InvalidSpecError,
    LaneExperimentSpec,
    check_experiment_name,
    parse_spec,
)

_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec")
SpecT = TypeVar("SpecT")


class ExperimentFileError(InvalidSpecError):
    """An experiment file that cannot be read or does not hold a valid LaneExperiment."""


def load_resource_document(document: Any, source: str, kind: str, check_name: Callable[[Any], Any],
                           parse: Callable[[Any], SpecT]) -> tuple[dict[str, Any], SpecT]:
    """Validate one parsed lanex document of `kind` with its own name rule and spec parser: (metadata,
    spec). Every problem is collected, each prefixed with `source`, so a file is fixed in one pass."""
    if not isinstance(document, dict):
        raise ExperimentFileError(f"{source}: expected a {kind} mapping, got {type(document).__name__}")
    problems = [f"{key}: unknown top-level field" for key in document if key not in _TOP_LEVEL]
    if document.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION} (got {document.get('apiVersion')!r})")
    if document.get("kind") != kind:
        problems.append(f"kind: must be {kind} (got {document.get('kind')!r})")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        problems.append("metadata: required, a mapping with at least a name")
        metadata = {}
    else:
        try:
            check_name(metadata.get("name"))
        except InvalidSpecError as error:
            problems.extend(error.problems)
    spec = None
    if "spec" not in document:
        problems.append("spec: required field is missing")
    else:
        try:
            spec = parse(document["spec"])
        except InvalidSpecError as error:
            problems.extend(error.problems)
    if problems or spec is None:
        located = [f"{source}: {problem}" for problem in problems]
        raise ExperimentFileError("; ".join(located), located)
    return dict(metadata), spec


def load_experiment_document(document: Any, source: str = "<document>") -> tuple[dict[str, Any], LaneExperimentSpec]:
    """Validate one parsed LaneExperiment document; errors are prefixed with `source`."""
    return load_resource_document(document, source, KIND, check_experiment_name, parse_spec)


def not_utf8_message(source: str, error: UnicodeDecodeError) -> str:
    """`FILE: not UTF-8 text (...)`, with the offset of the first bad byte, for every spec reader."""
    bad = " ".join(f"0x{byte:02x}" for byte in error.object[error.start:error.end])
    return (f"{source}: not UTF-8 text: byte offset {error.start} ({bad}): {error.reason}; "
            "save the LaneExperiment as UTF-8 YAML")


def read_document(path: Union[str, Path]) -> Any:
    """The one YAML document of the file at `path`; errors name the file (and the line of a YAML error)."""
    import yaml

    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as error:
        raise ExperimentFileError(f"{source}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ExperimentFileError(not_utf8_message(source, error)) from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        reason = getattr(error, "problem", None) or str(error)
        raise ExperimentFileError(f"{source}: invalid YAML{line}: {reason}") from None
    if len(documents) != 1:
        raise ExperimentFileError(f"{source}: expected exactly one YAML document, found {len(documents)}")
    return documents[0]


def load_experiment_file(path: Union[str, Path]) -> tuple[dict[str, Any], LaneExperimentSpec]:
    """Read a YAML file holding one LaneExperiment: (metadata, validated spec)."""
    return load_experiment_document(read_document(path), str(path))
