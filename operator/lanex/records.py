"""The typed records the `lanex` API returns: an experiment's state, its results, a sweep and its trials.

Why it exists: `lanex get --workspace -o json` and `lanex get -o json` print documents (a local
experiment's state, the cluster's objects); a notebook wants the same facts as typed objects. Each
record is built from exactly the document the CLI prints, kept in `record.document`, and its parts
are the API's own status models (`TrainingProgress`, `Results`, `ValidationResult`, `TrialRecord`,
...), so the record, the CLI and the CRD never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from lanex_operator.api.status import (
    LaneExperimentStatus,
    Phase,
    Results,
    TrainingProgress,
    ValidationResult,
)
from lanex_operator.api.sweep import (
    BestTrial,
    LaneSweepStatus,
    SweepPhase,
    TrialCounts,
    TrialRecord,
    natural_goal,
)
from lanex_operator.plan.sweep import ranked_by

FINISHED_PHASES = (Phase.SUCCEEDED, Phase.FAILED, Phase.STOPPED)


def _phase(value: Any) -> Optional[Phase]:
    try:
        return Phase(value) if value else None
    except ValueError:  # a phase this lanex does not know (a newer operator): unknown rather than wrong
        return None


def _progress(value: Any) -> Optional[TrainingProgress]:
    """The trainer's progress record, or None when there is none (or it is not one: a torn or foreign file)."""
    if not isinstance(value, Mapping):
        return None
    try:
        return TrainingProgress.model_validate(value)
    except ValidationError:
        return None


def _results(value: Any) -> Results:
    try:
        return Results.model_validate(value or {})
    except ValidationError:
        return Results()


@dataclass(frozen=True)
class ExperimentRecord:
    """One experiment as `lanex get` shows it: phase, live progress, results and result snapshot.

    From a workspace (`Workspace.get`) or a cluster (`Cluster.get`); `document` is what
    `lanex get --workspace -o json` (one entry of `experiments`) or `lanex get NAME -o json` prints.
    """

    name: str
    phase: Optional[Phase]
    """Lifecycle phase (`Phase.TRAINING`, `Phase.SUCCEEDED`, ...); None before the first step."""
    progress: Optional[TrainingProgress]
    """The trainer's newest progress record (epoch, step, loss, images/s, ETA, validations), if any yet."""
    results: Results
    """Test-split TuSimple accuracy, FP and FN rates (None until training has finished)."""
    snapshot: Optional[str]
    """The snapshot holding data, model and logs once the experiment succeeded."""
    message: Optional[str] = None
    """Details of the phase or of the failure."""
    reason: Optional[str] = None
    """Why it failed or stopped (cluster: `status.reason`)."""
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    namespace: Optional[str] = None
    """The namespace on a cluster; None in a workspace."""
    running: Optional[bool] = None
    """Workspace only: whether its `lanex run` (or `Workspace.start`) is still going; None when that cannot be told."""
    status: Optional[LaneExperimentStatus] = None
    """Cluster only: the whole `status` (conditions, children, provenance, ...)."""
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The document the CLI prints for it."""

    @property
    def finished(self) -> bool:
        """Whether it has ended: Succeeded, Failed or Stopped."""
        return self.phase in FINISHED_PHASES

    @classmethod
    def from_workspace(cls, document: Mapping[str, Any]) -> "ExperimentRecord":
        """From one entry of `lanex get --workspace -o json` (`local.runner.local_experiments`)."""
        return cls(name=document["name"], phase=_phase(document.get("phase")),
                   progress=_progress(document.get("progress")), results=_results(document.get("results")),
                   snapshot=document.get("snapshot"), message=document.get("message"),
                   start_time=document.get("startTime"), completion_time=document.get("completionTime"),
                   running=document.get("running"), document=dict(document))

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "ExperimentRecord":
        """From a LaneExperiment object as the API server serves it."""
        raw = dict(obj.get("status") or {})
        try:
            status: Optional[LaneExperimentStatus] = LaneExperimentStatus.model_validate(raw)
        except ValidationError:
            status = None
        meta = obj.get("metadata") or {}
        return cls(name=meta["name"], namespace=meta.get("namespace"), phase=_phase(raw.get("phase")),
                   progress=_progress(raw.get("progress")), results=_results(raw.get("results")),
                   snapshot=(raw.get("provenance") or {}).get("resultSnapshot"), message=raw.get("message"),
                   reason=raw.get("reason"), start_time=raw.get("startTime"),
                   completion_time=raw.get("completionTime"), status=status, document=dict(obj))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training, as the trainer recorded it in `results.json` (workspace runs)."""

    epoch: int
    """1-based, as in the progress records."""
    step: int
    train_loss: float
    images_per_second: Optional[float] = None


@dataclass(frozen=True)
class RunResults:
    """What a finished run produced: test metrics, curves and where its files are."""

    name: str
    accuracy: Optional[float]
    """TuSimple accuracy on the test split (0..1)."""
    fp: Optional[float]
    """False-positive rate on the test split."""
    fn: Optional[float]
    """False-negative rate on the test split."""
    validation: list[ValidationResult] = field(default_factory=list)
    """The validation after each epoch, oldest first (the accuracy curve)."""
    training: list[EpochRecord] = field(default_factory=list)
    """Training loss per epoch (workspace runs: from results.json; the cluster keeps only `validation`)."""
    epochs: Optional[int] = None
    images_per_second: Optional[float] = None
    checkpoint: Optional[str] = None
    processes: Optional[int] = None
    """Training processes (world size) of the run."""
    output_dir: Optional[str] = None
    """The run's folder: a local path in a workspace, a path on the dataset volume on a cluster."""

    @property
    def curves(self) -> Optional[str]:
        """The loss and accuracy curves the trainer drew (PNG)."""
        return f"{self.output_dir}/curves.png" if self.output_dir else None

    @property
    def worst(self) -> Optional[str]:
        """The test images the model got most wrong, with their lanes (PNG)."""
        return f"{self.output_dir}/worst.png" if self.output_dir else None

    @property
    def overlays(self) -> Optional[str]:
        """The folder of per-image overlays of predicted and labelled lanes."""
        return f"{self.output_dir}/overlays/" if self.output_dir else None

    @property
    def results_file(self) -> Optional[str]:
        return f"{self.output_dir}/results.json" if self.output_dir else None

    @classmethod
    def from_output_dir(cls, name: str, output_dir: Path, validation: Sequence[Mapping[str, Any]]) -> "RunResults":
        """From a workspace run's folder: its `results.json` (absent: no results yet) and validation history."""
        try:
            data = json.loads((output_dir / "results.json").read_text())
        except (OSError, ValueError):
            data = {}
        training = [EpochRecord(epoch=int(r["epoch"]) + 1, step=int(r["step"]), train_loss=float(r["train_loss"]),
                                images_per_second=r.get("images_per_second"))
                    for r in data.get("history") or [] if isinstance(r, Mapping) and "train_loss" in r]
        return cls(name=name, accuracy=data.get("accuracy"), fp=data.get("fp"), fn=data.get("fn"),
                   validation=_validations(validation), training=training, epochs=data.get("epochs"),
                   images_per_second=data.get("images_per_second"), checkpoint=data.get("checkpoint"),
                   processes=data.get("world_size"), output_dir=str(output_dir))


def _validations(history: Sequence[Mapping[str, Any]]) -> list[ValidationResult]:
    found = []
    for entry in history:
        try:
            found.append(ValidationResult.model_validate(entry))
        except ValidationError:
            continue  # a half-written entry: the curve goes on without it
    return found


@dataclass(frozen=True)
class SweepRecord:
    """One LaneSweep: phase, the trials table, the best trial (`leaderboard()` ranks them)."""

    name: str
    phase: Optional[SweepPhase]
    trials: list[TrialRecord]
    """Every trial in order: parameters, phase, validation metric, objective, snapshot."""
    best: Optional[BestTrial]
    counts: Optional[TrialCounts]
    metric: str = "accuracy"
    """The objective: a TuSimple metric on the test split."""
    goal: str = "maximize"
    dataset_snapshot: Optional[str] = None
    reason: Optional[str] = None
    message: Optional[str] = None
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    namespace: Optional[str] = None
    compare_plot: Optional[str] = None
    """Workspace only: the validation curves of every trial in one PNG."""
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.phase in (SweepPhase.SUCCEEDED, SweepPhase.FAILED)

    def leaderboard(self) -> list[TrialRecord]:
        """The succeeded trials with an objective, best first (ties: the earlier trial first)."""
        return ranked_by(self.goal, self.trials)

    @classmethod
    def from_status(cls, name: str, raw: Mapping[str, Any], objective: Mapping[str, Any],
                    document: Mapping[str, Any], namespace: Optional[str] = None) -> "SweepRecord":
        status = LaneSweepStatus.model_validate({k: v for k, v in raw.items() if v is not None})
        metric = str(objective.get("metric") or "accuracy")
        return cls(name=name, phase=status.phase, trials=list(status.trials), best=status.best_trial,
                   counts=status.counts, metric=metric, goal=str(objective.get("goal") or natural_goal(metric)),
                   dataset_snapshot=status.dataset_snapshot, reason=status.reason, message=status.message,
                   start_time=status.start_time, completion_time=status.completion_time, namespace=namespace,
                   compare_plot=raw.get("comparePlot"), document=dict(document))

    @classmethod
    def from_workspace(cls, document: Mapping[str, Any]) -> "SweepRecord":
        """From one entry of `sweeps` in `lanex get --workspace -o json`."""
        return cls.from_status(document["name"], document, document.get("objective") or {}, document)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "SweepRecord":
        """From a LaneSweep object as the API server serves it."""
        meta = obj.get("metadata") or {}
        return cls.from_status(meta["name"], obj.get("status") or {}, (obj.get("spec") or {}).get("objective") or {},
                               obj, namespace=meta.get("namespace"))


@dataclass(frozen=True)
class WatchEvent:
    """One event of `Cluster.events`: an experiment as it was (`CURRENT`, before `SYNCED`) or as it changed
    (`ADDED`, `MODIFIED`, `DELETED`); `SYNCED` (no record) says every current one has been given."""

    type: str
    record: Optional[ExperimentRecord] = None


@dataclass(frozen=True)
class ClusterSnapshot:
    """A VolumeSnapshot of a lanex experiment on a cluster."""

    name: str
    experiment: Optional[str]
    ready_to_use: bool
    restore_size: Optional[str]
    creation_time: Optional[str]
    source_claim: Optional[str]
    error: Optional[str]
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "ClusterSnapshot":
        status, meta = obj.get("status") or {}, obj.get("metadata") or {}
        return cls(name=meta["name"], experiment=(meta.get("labels") or {}).get("lanex.dev/experiment"),
                   ready_to_use=bool(status.get("readyToUse")), restore_size=status.get("restoreSize"),
                   creation_time=status.get("creationTime"),
                   source_claim=((obj.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName"),
                   error=(status.get("error") or {}).get("message"), document=dict(obj))


@dataclass(frozen=True)
class Deletion:
    """What `Cluster.delete` did: what retention keeps, what went with the experiment, what the operator said."""

    name: str
    keeps: list[str]
    removes: list[str]
    kind: str = "LaneExperiment"
    """LaneExperiment or LaneSweep."""
    uid: Optional[str] = None
    gone: bool = False
    """With `wait=True`: the experiment (or sweep) is gone from the API server."""
    operator_message: Optional[str] = None
    """With `wait=True`: the operator's `Deleted` Event, what its finalizer did."""


@dataclass(frozen=True)
class ComparedRun:
    """One run to compare (`Workspace.compare`, `Cluster.compare`): its parameters, training spec,
    test results and validation curve."""

    name: str
    phase: Optional[str]
    parameters: Optional[dict[str, Any]]
    """A sweep trial's parameters; None for a plain experiment."""
    training: dict[str, Any]
    """Its `spec.training`, camelCase."""
    results: Results
    history: list[ValidationResult]
