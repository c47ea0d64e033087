"""The LaneSweep API: many LaneExperiments ("trials") from one prepared dataset.

Why it exists: TR-4896 promises "numerous experiments in parallel, with fast access to the data".
A sweep prepares its dataset once, snapshots it, and gives every trial its own instant clone
(`dataset.fromSnapshot`). This module is the sweep's one typed source of truth, like `api.models`
is the experiment's: the spec and status models (the CRD and docs table are generated from them),
the validation that names the parameter at fault, and the pure, deterministic generation of the
trials (`trials_for`), shared by the operator and `lanex run`.

`spec.template` is a LaneExperiment spec validated by the very same models; every parameter's
`path` names a field of `template.training` (`learningRate`, `batchSize`, `validation.batchSize`),
and every value a parameter can take is applied to the template and validated by the
LaneExperiment model before any trial exists, so a value the experiment would reject is an error
of the sweep, naming the parameter.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from lanex_operator.api.fields import Timestamp
from lanex_operator.api.models import (
    DNS_1035_LABEL_PATTERN,
    MAX_WORKERS,
    InvalidSpecError,
    LaneExperimentSpec,
    RetentionPolicy,
    SpecModel,
    TrainingSpec,
    _plain,
    _section,
    describe_errors,
    matches,
    parse_spec,
)
from lanex_operator.api.status import Condition, MlflowLink, StatusModel

SWEEP_KIND = "LaneSweep"
SWEEP_PLURAL = "lanesweeps"
SWEEP_SINGULAR = "lanesweep"
SWEEP_SHORT_NAME = "lxs"
SWEEP_LABEL = "lanex.dev/sweep"  # on every trial and every child of the sweep: the sweep's name
TRIAL_PARAMETERS_ANNOTATION = "lanex.dev/trial-parameters"  # on a trial: its parameters, JSON
# On a trial created once the sweep's MLflow parent run is known: its run id (the trial's run becomes its child).
MLFLOW_PARENT_ANNOTATION = "lanex.dev/mlflow-parent-run-id"
MAX_TRIALS = 999
# Every name derived from a sweep's must stay valid: its trials `<sweep>-NNN` and the experiment plan of its dataset
# `<sweep>-dataset` are experiment names (at most 42 characters, DNS-1035), so the dataset's makes it 34.
# `lanex_operator.plan.sweep.longest_valid_sweep_name_length()` computes it from the name builders (a test checks).
MAX_SWEEP_NAME_LENGTH = 34
SWEEP_NAME_RULE = (
    f"a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, ending with a letter or digit)"
    f" of at most {MAX_SWEEP_NAME_LENGTH} characters, so that every name derived from it (its trials <name>-000 to"
    f" <name>-{MAX_TRIALS - 1} and their children up to {MAX_WORKERS} workers, its dataset <name>-dataset with its"
    f" PVC, prepare Job and snapshot) stays valid"
)
METRICS = ("accuracy", "fp", "fn")
Metric = Literal["accuracy", "fp", "fn"]

# Any JSON value (a parameter's value: number, string, boolean); the CRD keeps it as given.
AnyValue = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]
AnyMapping = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]


def natural_goal(metric: str) -> str:
    """accuracy is maximized, the FP and FN rates are minimized."""
    return "maximize" if metric == "accuracy" else "minimize"


# --- spec ------------------------------------------------------------------------------------


class SweepParameter(SpecModel):
    """One swept field of the template's training: a list of values (grid or random choice) or a range (random)."""

    path: str = Field(
        description="Field of spec.template.training in camelCase, dotted for nested fields (learningRate, batchSize,"
        " backbone, epochs, validation.batchSize).",
        pattern=r"^[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)*$",
    )
    values: Optional[list[AnyValue]] = Field(
        None, description="The values to try (grid: every one; random: chosen uniformly).", min_length=1
    )
    min: Optional[float] = Field(None, description="Lower bound of a range (random algorithm only).")
    max: Optional[float] = Field(None, description="Upper bound of a range (random algorithm only).")
    scale: Literal["linear", "log"] = Field("linear", description="How a range is sampled: linear or log (min > 0).")
    type: Literal["float", "int"] = Field("float", description="Type of the values sampled from a range.")

    @model_validator(mode="after")
    def _values_or_range(self) -> "SweepParameter":
        ranged = self.min is not None or self.max is not None
        if self.values is not None and ranged:
            raise PydanticCustomError("parameter_kind", "set either values or min and max, not both", {})
        if self.values is None and (self.min is None or self.max is None):
            raise PydanticCustomError("parameter_kind", "set values, or both min and max", {})
        if ranged:
            assert self.min is not None and self.max is not None
            if self.min > self.max:
                raise PydanticCustomError("parameter_range", "min must be <= max (got min {lo}, max {hi})",
                                          {"lo": self.min, "hi": self.max, "field": "min"})
            if self.scale == "log" and self.min <= 0:
                raise PydanticCustomError("parameter_range", "a log scale needs min > 0 (got {lo})",
                                          {"lo": self.min, "field": "min"})
        return self

    def candidates(self) -> list[Any]:
        """The values that validation checks: every listed value, or the ends of the range."""
        if self.values is not None:
            return list(self.values)
        assert self.min is not None and self.max is not None
        ends = [self.min, self.max]
        return [int(math.ceil(self.min)), int(math.floor(self.max))] if self.type == "int" else ends


class SweepAlgorithm(SpecModel):
    """How trials are chosen: every combination (grid) or seeded random draws (random)."""

    type: Literal["grid", "random"] = Field("grid", description="grid (every combination of values) or random.")
    seed: int = Field(0, description="Random seed; the same seed gives the same trials.", ge=0)
    max_trials: Optional[int] = Field(
        None, description=f"Number of trials (random: required; grid: the first N combinations). At most {MAX_TRIALS}.",
        ge=1, le=MAX_TRIALS,
    )


class SweepObjective(SpecModel):
    """What makes the best trial: a TuSimple metric on the test split."""

    metric: Metric = Field("accuracy", description="accuracy, fp or fn (the TuSimple metric on the test split).")
    goal: Optional[Literal["maximize", "minimize"]] = Field(
        None, description="maximize or minimize; unset: maximize accuracy, minimize fp and fn."
    )

    def direction(self) -> str:
        return self.goal or natural_goal(self.metric)


class EarlyStoppingSpec(SpecModel):
    """Stop trials that fall behind: the median stopping rule on the validation metric."""

    rule: Literal["median"] = Field(
        "median",
        description="median: a trial whose validation metric at epoch e (e >= minEpochs) is worse than the median"
        " of the other trials at e is stopped.",
    )
    min_epochs: int = Field(2, description="First epoch at which a trial may be stopped.", ge=1)
    min_trials: int = Field(2, description="Other trials that must have reached epoch e before the rule applies.", ge=1)


class SweepRetentionSpec(SpecModel):
    """What is kept of the trials once the sweep finished, and of the dataset when the sweep is deleted."""

    keep_best: Optional[int] = Field(
        None,
        description="Keep the best N trials (by the objective); the others are deleted with their volumes and"
        " snapshots once the sweep finished (their rows stay in status.trials). Unset: keep every trial.",
        ge=0,
    )
    dataset: RetentionPolicy = Field(
        "Retain", description="Retain or Delete the sweep's dataset PVC and snapshot when the LaneSweep is deleted."
    )


class LaneSweepSpec(SpecModel):
    """Many LaneExperiments (trials) of one template, on clones of one prepared dataset."""

    template: LaneExperimentSpec = Field(
        description="The LaneExperiment spec every trial starts from; its dataset is the sweep's dataset (prepared"
        " once and snapshotted, or a fromSnapshot source used directly)."
    )
    parameters: list[SweepParameter] = Field(
        description="The swept fields of template.training (paths unique).", min_length=1,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["path"]},
    )
    algorithm: SweepAlgorithm = _section(SweepAlgorithm, "grid or random.")
    parallelism: int = Field(1, description="Trials unfinished at the same time, at most.", ge=1, le=100)
    objective: SweepObjective = _section(SweepObjective, "The metric that ranks the trials.")
    val_metric: Metric = Field(
        "accuracy",
        description="Validation metric early stopping compares (accuracy is maximized, fp and fn minimized).",
    )
    early_stopping: Optional[EarlyStoppingSpec] = Field(None, description="Early stopping; unset: none.")
    retention: SweepRetentionSpec = _section(SweepRetentionSpec, "What the sweep keeps.")

    @model_validator(mode="after")
    def _check(self) -> "LaneSweepSpec":
        seen: set[str] = set()
        for parameter in self.parameters:
            if parameter.path in seen:
                raise PydanticCustomError("duplicate_parameter", "parameter path {path} appears twice",
                                          {"path": parameter.path, "field": "parameters"})
            seen.add(parameter.path)
        if self.algorithm.type == "grid":
            ranged = [p.path for p in self.parameters if p.values is None]
            if ranged:
                raise PydanticCustomError("grid_range", "grid needs values for every parameter (a range has none): {paths}",
                                          {"paths": ", ".join(ranged), "field": "algorithm.type"})
        elif self.algorithm.max_trials is None:
            raise PydanticCustomError("random_trials", "required with algorithm random", {"field": "algorithm.maxTrials"})
        return self


# --- status ----------------------------------------------------------------------------------


class SweepPhase(str, Enum):
    """Where a sweep is (`status.phase`)."""

    PENDING = "Pending"
    PREPARING_DATASET = "PreparingDataset"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class SweepConditionType(str, Enum):
    DATASET_READY = "DatasetReady"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TRIAL_FINAL_PHASES = ("Succeeded", "Failed", "Stopped")


class TrialRecord(StatusModel):
    """One row of the trials table."""

    name: str = Field(description="The trial's LaneExperiment.")
    parameters: AnyMapping = Field(default_factory=dict, description="The swept values, by parameter path.")
    phase: Optional[str] = Field(None, description="The trial's phase (Pending until it is created; Stopped when early-stopped).")
    reason: Optional[str] = Field(None, description="Why it failed or stopped (EarlyStopped, TrainingFailed, ...).")
    progress: Optional[str] = Field(None, description="Epoch/epochs of the newest progress seen.")
    val_metric: Optional[float] = Field(None, description="Newest validation value of spec.valMetric.")
    objective: Optional[float] = Field(None, description="The objective metric on the test split.")
    snapshot: Optional[str] = Field(None, description="The trial's result snapshot.")
    deleted: Optional[bool] = Field(None, description="True once retention deleted the trial.")


class TrialCounts(StatusModel):
    """Trials by state."""

    pending: int = Field(0, description="Not created yet, or created and not started.")
    running: int = Field(0, description="Created and not finished.")
    succeeded: int = Field(0, description="Succeeded.")
    failed: int = Field(0, description="Failed.")
    stopped: int = Field(0, description="Stopped early.")


class BestTrial(StatusModel):
    """The best trial by the objective."""

    name: str = Field(description="The trial's LaneExperiment.")
    parameters: AnyMapping = Field(default_factory=dict, description="Its parameters.")
    objective: Optional[float] = Field(None, description="Its objective value.")
    snapshot: Optional[str] = Field(None, description="Its result snapshot.")


class LaneSweepStatus(StatusModel):
    """Observed state of a LaneSweep, written only by the operator (or `lanex run` locally)."""

    phase: Optional[SweepPhase] = Field(None, description="Pending, PreparingDataset, Running, Succeeded or Failed.")
    reason: Optional[str] = Field(None, description="Failure reason when phase is Failed.")
    message: Optional[str] = Field(None, description="Details of the current phase or failure.")
    conditions: list[Condition] = Field(default_factory=list, description="Preflight, DatasetReady, Succeeded, Failed.")
    observed_generation: Optional[int] = Field(None, description="Last metadata.generation acted upon.")
    dataset_claim: Optional[str] = Field(None, description="The PVC the dataset was prepared on.")
    prepare_job: Optional[str] = Field(None, description="The download/prepare Job.")
    dataset_snapshot: Optional[str] = Field(None, description="The VolumeSnapshot every trial restores.")
    trial_count: Optional[int] = Field(None, description="Trials in the sweep.")
    trials: list[TrialRecord] = Field(default_factory=list, description="Every trial, in order.")
    counts: Optional[TrialCounts] = Field(None, description="Trials by state.")
    best_trial: Optional[BestTrial] = Field(None, description="The best finished trial so far.")
    mlflow: Optional[MlflowLink] = Field(
        None, description="The sweep's MLflow parent run (spec.template.tracking.mlflow); its trials' runs are its children.")
    start_time: Optional[Timestamp] = Field(None, description="When the operator started the sweep.")
    completion_time: Optional[Timestamp] = Field(None, description="When the sweep succeeded or failed.")


# --- validation at the edge ------------------------------------------------------------------


def check_sweep_name(name: Any) -> str:
    """Raise InvalidSpecError unless `name` can name a sweep and everything derived from it (trials, dataset)."""
    if not isinstance(name, str) or not name:
        raise InvalidSpecError(f"metadata.name: required, a non-empty string (got {name!r})")
    if len(name) > MAX_SWEEP_NAME_LENGTH:
        raise InvalidSpecError(f"metadata.name: must have at most {MAX_SWEEP_NAME_LENGTH} characters: it must be "
                               f"{SWEEP_NAME_RULE} (got {len(name)}: {name!r})")
    if not matches(DNS_1035_LABEL_PATTERN, name):
        raise InvalidSpecError(f"metadata.name: must be {SWEEP_NAME_RULE} (got {name!r})")
    return name


def _training_fields(model: type[BaseModel], path: str) -> bool:
    """Whether the dotted camelCase `path` names a field of `model` (nested sections included)."""
    head, _, rest = path.partition(".")
    for name, info in model.model_fields.items():
        if (info.alias or name) == head:
            if not rest:
                return True
            annotation = info.annotation
            return isinstance(annotation, type) and issubclass(annotation, BaseModel) and _training_fields(annotation, rest)
    return False


def with_parameters(template: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The template document (camelCase) with each `training.<path>` set to its value."""
    document = json.loads(json.dumps(dict(template)))
    for path, value in parameters.items():
        node = document.setdefault("training", {})
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return document


def parse_sweep_spec(spec: Any) -> LaneSweepSpec:
    """Validate a LaneSweep spec; raises InvalidSpecError listing every problem as `spec.path: reason`.

    Beyond the models: every parameter path must name a template.training field, and every value
    a parameter can take (each listed value, or both ends of a range) must be accepted by the
    LaneExperiment model, or the problem names the parameter (`spec.parameters[0] (learningRate)`).
    """
    if not isinstance(spec, Mapping):
        raise InvalidSpecError(f"spec: must be an object (got {type(spec).__name__})")
    try:
        parsed = LaneSweepSpec.model_validate(_plain(spec))
    except ValidationError as error:
        problems = describe_errors(error.errors(include_url=False))
        raise InvalidSpecError("; ".join(problems), problems) from None
    problems = []
    template = template_document(parsed)
    for index, parameter in enumerate(parsed.parameters):
        where = f"spec.parameters[{index}] ({parameter.path})"
        if not _training_fields(TrainingSpec, parameter.path):
            problems.append(f"{where}: unknown field of spec.template.training")
            continue
        for value in parameter.candidates():
            try:
                parse_spec(with_parameters(template, {parameter.path: value}))
            except InvalidSpecError as error:
                reasons = "; ".join(p.replace("spec.", "spec.template.", 1) for p in error.problems)
                problems.append(f"{where}: value {value!r} is rejected: {reasons}")
    too_many = too_many_trials(parsed)
    if too_many:
        problems.append(too_many)
    if problems:
        raise InvalidSpecError("; ".join(problems), problems)
    return parsed


def template_document(spec: LaneSweepSpec) -> dict[str, Any]:
    """The template as the user wrote it (camelCase, only the fields set)."""
    return spec.template.model_dump(mode="json", by_alias=True, exclude_unset=True)


# --- trials: deterministic, pure ---------------------------------------------------------------


def dataset_snapshot_name(sweep: str) -> str:
    """The snapshot of the sweep's prepared dataset (deterministic: created once, found again after a restart)."""
    return f"{sweep}-dataset"


def mlflow_job_name(sweep: str, end: bool = False) -> str:
    """The Job that creates (`<sweep>-mlflow`) or ends (`<sweep>-mlflow-end`) the sweep's MLflow parent run."""
    return f"{sweep}-mlflow-end" if end else f"{sweep}-mlflow"


def trial_name(sweep: str, index: int) -> str:
    """`<sweep>-NNN`, 0-based."""
    return f"{sweep}-{index:03d}"


def _round(value: float) -> float:
    # Six significant digits: readable in tables, and the same on every machine.
    return float(f"{value:.6g}")


def _draw(parameter: SweepParameter, rng: random.Random) -> Any:
    if parameter.values is not None:
        return parameter.values[rng.randrange(len(parameter.values))]
    assert parameter.min is not None and parameter.max is not None
    if parameter.scale == "log":
        value = math.exp(rng.uniform(math.log(parameter.min), math.log(parameter.max)))
    else:
        value = rng.uniform(parameter.min, parameter.max)
    if parameter.type == "int":
        return min(int(math.floor(parameter.max)), max(int(math.ceil(parameter.min)), int(round(value))))
    return _round(value)


def trial_parameters(spec: LaneSweepSpec) -> list[dict[str, Any]]:
    """The parameters of every trial, in order: the grid's combinations (first parameter slowest), or
    `maxTrials` seeded draws. A pure function of the spec: the same spec gives the same trials."""
    paths = [p.path for p in spec.parameters]
    limit = spec.algorithm.max_trials or MAX_TRIALS
    if spec.algorithm.type == "grid":
        combos = itertools.product(*(p.values or [] for p in spec.parameters))
        return [dict(zip(paths, combo)) for combo in itertools.islice(combos, limit)]
    rng = random.Random(spec.algorithm.seed)
    return [{p.path: _draw(p, rng) for p in spec.parameters} for _ in range(limit)]


def trial_spec(spec: LaneSweepSpec, parameters: Mapping[str, Any], dataset_snapshot: Optional[str]) -> LaneExperimentSpec:
    """The LaneExperiment spec of one trial: the template with its parameters, restoring `dataset_snapshot`
    (None: the template's own dataset, e.g. a fromSnapshot source used directly)."""
    document = with_parameters(template_document(spec), parameters)
    if dataset_snapshot is not None:
        dataset = {k: v for k, v in (document.get("dataset") or {}).items()
                   if k in ("storageClassName", "size", "prepareBackoffLimit")}
        dataset["fromSnapshot"] = {"snapshotName": dataset_snapshot}
        document["dataset"] = dataset
    return parse_spec(document)


def trial_count(spec: LaneSweepSpec) -> int:
    """How many trials the sweep has."""
    if spec.algorithm.type == "random":
        return spec.algorithm.max_trials or 0
    total = math.prod(len(p.values or []) for p in spec.parameters)
    return min(total, spec.algorithm.max_trials or MAX_TRIALS)


def too_many_trials(spec: LaneSweepSpec) -> Optional[str]:
    """A problem when a grid has more than MAX_TRIALS combinations and no maxTrials cap."""
    if spec.algorithm.type == "grid" and spec.algorithm.max_trials is None:
        total = math.prod(len(p.values or []) for p in spec.parameters)
        if total > MAX_TRIALS:
            return (f"spec.parameters: the grid has {total} combinations, more than {MAX_TRIALS}; "
                    f"set spec.algorithm.maxTrials or fewer values")
    return None
