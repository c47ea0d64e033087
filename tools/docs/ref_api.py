"""Reference pages of the two custom resources, LaneExperiment and LaneSweep, from their models.

The rows are the ones `lanex_operator.api.docs` walks in the CRD schema that the pydantic models
generate, which also give the validation errors of `lanex run`, `lanex submit` and `lanex render`.
"""

from __future__ import annotations

from typing import Any, Optional

from lanex_operator.api.docs import field_rows
from lanex_operator.api.status import LaneExperimentStatus
from lanex_operator.api.sweep_crd import sweep_table_schema

import cells


def _fields(schema: Optional[dict[str, Any]] = None) -> str:
    rows = [(path, kind.replace("|", "\\|"), required, default, cells.text(description))
            for path, kind, required, default, description in field_rows(schema)]
    return cells.table(("Field", "Type", "Required", "Default", "Description"), rows)


def _status_rows() -> list[tuple[str, ...]]:
    return [(f"`status.{field.alias or name}`", cells.text(field.description or ""))
            for name, field in LaneExperimentStatus.model_fields.items()]


def experiment_page() -> str:
    return "\n".join([
        "# LaneExperiment API",
        "",
        cells.generated_note("the pydantic models (`operator/lanex_operator/api/models.py`)"),
        "`apiVersion: lanex.dev/v1alpha1`, `kind: LaneExperiment` (short name `lx`). The same models generate "
        "the CRD's schema (`crds/lanex.dev_laneexperiments.yaml`, `python -m lanex_operator.api.crd`) and the "
        "validation errors of `lanex run`, `lanex submit` and `lanex render`, so a field means the same "
        "everywhere. Names: see [Experiment](../concepts/experiment.md#names).",
        "",
        "## Spec",
        "",
        _fields(),
        "## Status",
        "",
        "Written only by the operator; conditions and reasons: [Conditions and reasons](conditions.md).",
        "",
        cells.table(("Field", "Description"), _status_rows()),
    ])


def sweep_page() -> str:
    return "\n".join([
        "# LaneSweep API",
        "",
        cells.generated_note("the pydantic models (`operator/lanex_operator/api/sweep.py`)"),
        "`apiVersion: lanex.dev/v1alpha1`, `kind: LaneSweep` (short name `lxs`); the CRD is "
        "`crds/lanex.dev_lanesweeps.yaml` (`python -m lanex_operator.api.sweep_crd`). `spec.template` is a "
        "[LaneExperiment spec](laneexperiment.md#spec). Names: at most **34 characters** "
        "(see [Sweeps](../concepts/sweeps.md#names)).",
        "",
        "## Spec",
        "",
        _fields(sweep_table_schema()),
    ])
