"""The LaneExperiment API (group lanex.dev, version v1alpha1): models, validation, CRD, docs.

Import from here: `from lanex_operator.api import parse_spec, LaneExperimentSpec, build_crd`.
Nothing in this package imports kopf or torch.
"""

from typing import Any

from lanex_operator.api.files import ExperimentFileError, load_experiment_file
from lanex_operator.api.models import (
    API_VERSION,
    GROUP,
    KIND,
    MAX_EXPERIMENT_NAME_LENGTH,
    PLURAL,
    RESERVED_ENV_NAMES,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    ChildNames,
    Condition,
    ConditionType,
    DatasetSpec,
    FailureReason,
    InvalidSpecError,
    LaneExperimentSpec,
    LaneExperimentStatus,
    Phase,
    Provenance,
    Results,
    SnapshotRecord,
    StorageMove,
    TrainingSpec,
    parse_spec,
    training_config_hash,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "MAX_EXPERIMENT_NAME_LENGTH",
    "PLURAL",
    "RESERVED_ENV_NAMES",
    "SHORT_NAME",
    "SINGULAR",
    "VERSION",
    "ChildNames",
    "Condition",
    "ConditionType",
    "DatasetSpec",
    "ExperimentFileError",
    "FailureReason",
    "InvalidSpecError",
    "LaneExperimentSpec",
    "LaneExperimentStatus",
    "Phase",
    "Provenance",
    "Results",
    "SnapshotRecord",
    "StorageMove",
    "TrainingSpec",
    "build_crd",
    "load_experiment_file",
    "parse_spec",
    "training_config_hash",
    "validate_against_crd",
]


def __getattr__(name: str) -> Any:
    # The CRD helpers load lazily so that `python -m lanex_operator.api.crd` runs cleanly.
    if name in ("build_crd", "validate_against_crd"):
        from lanex_operator.api import crd

        return getattr(crd, name)
    raise AttributeError(f"module 'lanex_operator.api' has no attribute {name!r}")
