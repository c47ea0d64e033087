"""Reading LaneSweep documents and files (`lanex run`, `lanex submit`), and telling sweeps from experiments.

Errors name the file and the field, like the experiment's (`api.files`), so one YAML file of
either kind fails the same clear way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from lanex_operator.api.files import load_resource_document, read_document
from lanex_operator.api.models import KIND
from lanex_operator.api.sweep import SWEEP_KIND, LaneSweepSpec, check_sweep_name, parse_sweep_spec


def document_kind(document: Any) -> str:
    """`LaneSweep` or `LaneExperiment` (the default: an experiment file's errors are the familiar ones)."""
    return SWEEP_KIND if isinstance(document, dict) and document.get("kind") == SWEEP_KIND else KIND


def load_sweep_document(document: Any, source: str = "<document>") -> tuple[dict[str, Any], LaneSweepSpec]:
    """Validate one parsed LaneSweep document: (metadata, spec); errors are prefixed with `source`."""
    return load_resource_document(document, source, SWEEP_KIND, check_sweep_name, parse_sweep_spec)


def load_sweep_file(path: Union[str, Path]) -> tuple[dict[str, Any], LaneSweepSpec]:
    """Read a YAML file holding one LaneSweep: (metadata, validated spec)."""
    return load_sweep_document(read_document(path), str(path))
