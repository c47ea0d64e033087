"""Status of a LaneExperiment: phase, conditions, children, snapshots, results, provenance.

Written only by the operator. The models read leniently (kopf keeps its own fields under
`status` too), and the CRD keeps unknown status fields for the same reason. `TrainingProgress` is
the trainer's progress record (PROGRESS_CONTRACT: the same camelCase keys in the trainer's
progress.json and `LANEX_PROGRESS` log line, in `status.progress` and in `lanex get --workspace`).
"""

from __future__ import annotations

from enum import Enum
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from lanex_operator.api.fields import Quantity, Timestamp


class Phase(str, Enum):
    """Where an experiment is in its lifecycle (`status.phase`)."""

    PENDING = "Pending"
    PROVISIONING_DATASET = "ProvisioningDataset"
    DOWNLOADING = "Downloading"
    SHARING_VOLUME = "SharingVolume"
    TRAINING = "Training"
    SNAPSHOTTING = "Snapshotting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"  # ended on purpose before training finished (a sweep's early stopping)


class FailureReason(str, Enum):
    """Why an experiment failed (`status.reason` and the `Failed` condition's reason)."""

    INVALID_SPEC = "InvalidSpec"
    DATASET_FAILED = "DatasetFailed"
    DOWNLOAD_FAILED = "DownloadFailed"
    TRAINING_FAILED = "TrainingFailed"
    SNAPSHOT_FAILED = "SnapshotFailed"
    TIMEOUT = "Timeout"
    QUEUE_TIMEOUT = "QueueTimeout"  # Kueue did not admit the MPIJob within spec.scheduler.queueTimeoutSeconds
    PREFLIGHT_FAILED = "PreflightFailed"  # what the experiment uses stayed missing past the Preflight bound
    RECONCILE_ERROR = "ReconcileError"  # the operator hit an error nothing foresaw: said once, never retried forever
    EARLY_STOPPED = "EarlyStopped"  # with phase Stopped: the sweep's early-stopping rule ended training


class ConditionType(str, Enum):
    """Condition types: one per step, the two terminal ones, and the operator's warnings."""

    PREFLIGHT = "Preflight"
    DATASET_READY = "DatasetReady"
    DATA_PREPARED = "DataPrepared"
    VOLUME_SHARED = "VolumeShared"
    TRAINED = "Trained"
    SNAPSHOTTED = "Snapshotted"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
    STORAGE_TIER = "StorageTier"
    STOPPED = "Stopped"
    QUEUED = "Queued"  # scheduler kueue: the MPIJob waits, suspended, for Kueue's admission
    TRAINING_FROM_SCRATCH = "TrainingFromScratch"
    STALLED = "Stalled"
    MLFLOW_PARENT_RUN = "MLflowParentRun"  # a sweep's MLflow parent run (spec.template.tracking.mlflow)


class StatusModel(BaseModel):
    """Base of the status models: camelCase, lenient on read (kopf adds its own fields)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(StatusModel):
    """A Kubernetes-style condition (`kubectl wait --for=condition=Succeeded lx/NAME`)."""

    type: str = Field(description="Condition type, e.g. DatasetReady, Trained, Succeeded, Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason of the last transition.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: Optional[Timestamp] = Field(None, description="When status last changed (RFC 3339).")
    observed_generation: Optional[int] = Field(None, description="metadata.generation the condition was set for.")


class ChildNames(StatusModel):
    """Names of the objects the experiment created or uses."""

    dataset_claim: Optional[str] = Field(None, description="Dataset PVC.")
    prepare_job: Optional[str] = Field(None, description="Download/prepare Job.")
    mpi_job: Optional[str] = Field(None, description="Training MPIJob.")
    snapshots: list[str] = Field(default_factory=list, description="VolumeSnapshots taken.")


class SnapshotError(StatusModel):
    """An error reported by the snapshot controller."""

    message: str = Field("", description="Error message.")
    time: Optional[Timestamp] = Field(None, description="When the error was reported.")


class SnapshotRecord(StatusModel):
    """A VolumeSnapshot taken by the experiment."""

    name: str = Field(description="VolumeSnapshot name.")
    content_name: Optional[str] = Field(None, description="Bound VolumeSnapshotContent.")
    ready_to_use: bool = Field(False, description="Whether the snapshot can be restored.")
    restore_size: Optional[Quantity] = Field(None, description="Minimum size of a volume restored from it.")
    creation_time: Optional[Timestamp] = Field(None, description="Point in time of the snapshot.")
    error: Optional[SnapshotError] = Field(None, description="Last error from the snapshot controller.")


class Results(StatusModel):
    """Evaluation results written by the launcher (TuSimple metric on the test split)."""

    accuracy: Optional[float] = Field(None, description="TuSimple accuracy (0..1).")
    fp: Optional[float] = Field(None, description="False-positive rate.")
    fn: Optional[float] = Field(None, description="False-negative rate.")
    checkpoint: Optional[str] = Field(None, description="Path of the final checkpoint on the dataset volume.")
    images_per_second: Optional[float] = Field(None, description="Training throughput, all processes together.")
    epochs: Optional[int] = Field(None, description="Epochs completed.")


class Provenance(StatusModel):
    """What it takes to trace and reproduce a result."""

    trainer_image: Optional[str] = Field(None, description="Trainer image that produced the result.")
    config_hash: Optional[str] = Field(None, description="SHA-256 of the canonical JSON of spec.training.")
    dataset_source: Optional[str] = Field(None, description="Where the data came from (URLs, seed, claim, snapshot).")
    result_snapshot: Optional[str] = Field(None, description="VolumeSnapshot holding data, model and logs.")


class StorageMove(StatusModel):
    """A change of the dataset volume's service level (capacity pool change)."""

    from_level: Optional[str] = Field(None, alias="from", description="Service level before the move.")
    to: str = Field(description="Service level after the move.")
    start: Optional[Timestamp] = Field(None, description="When the move started.")
    end: Optional[Timestamp] = Field(None, description="When the move ended.")
    result: Optional[str] = Field(None, description="Succeeded, Failed or InProgress, with the reason on failure.")


def _whole_seconds(value: Any) -> Any:
    # The contract says int; a trainer that writes 12.0 (or 12.4) still means 12 seconds.
    return int(round(value)) if isinstance(value, float) else value


class ValidationResult(StatusModel):
    """One validation of the trainer (TuSimple metric on the validation split) after an epoch."""

    epoch: int = Field(description="Epoch the validation followed (1-based).", ge=0)
    accuracy: float = Field(description="TuSimple accuracy (0..1).")
    fp: float = Field(description="False-positive rate.")
    fn: float = Field(description="False-negative rate.")
    loss: Optional[float] = Field(None, description="Validation loss (null if not computed).")


class GpuReading(StatusModel):
    """One rank's GPU, read through NVML by the trainer."""

    rank: int = Field(description="Training process rank.", ge=0)
    utilization_percent: Optional[float] = Field(None, description="GPU utilisation, percent.")
    memory_used_bytes: Optional[int] = Field(None, description="GPU memory in use, bytes.")
    memory_total_bytes: Optional[int] = Field(None, description="GPU memory in total, bytes.")


class MlflowLink(StatusModel):
    """An MLflow run: where `lanex get` and the UI link to (no credentials in it)."""

    run_id: str = Field(description="The MLflow run id.", max_length=64)
    experiment_id: Optional[str] = Field(None, description="The MLflow experiment id.", max_length=64)
    url: Optional[str] = Field(None, description="The run's page on the tracking server.", max_length=4096)


class TrainingProgress(StatusModel):
    """The trainer's newest progress (rank 0 publishes it), as the operator last read it.

    Every key is always present; null means unknown (e.g. `gpus` on CPU, `validation` before the
    first epoch ended). `observedAt` is the operator's: when it read a progress that had advanced
    (a new step, state, epoch or validation), so it is also the clock of stall detection.
    """

    state: Literal["training", "validating", "finished"] = Field(description="training, validating or finished.")
    run_id: Optional[str] = Field(None, description="The training run's id.", max_length=253)
    epoch: int = Field(description="Current epoch, 1-based.", ge=0)
    epochs: int = Field(description="Epochs of the run.", ge=0)
    step: int = Field(description="Optimizer steps done in the whole run.", ge=0)
    steps: int = Field(description="Optimizer steps of the whole run.", ge=0)
    loss: Optional[float] = Field(None, description="Smoothed (EMA) training loss.")
    learning_rate: Optional[float] = Field(None, description="Current learning rate.")
    images_per_second: Optional[float] = Field(None, description="Training throughput over all ranks.")
    data_wait_fraction: Optional[float] = Field(None, description="Share of step time spent waiting for data (0..1).")
    eta_seconds: Annotated[Optional[int], BeforeValidator(_whole_seconds)] = Field(
        None, description="Estimated seconds until training ends.")
    validation: Optional[ValidationResult] = Field(None, description="The newest validation.")
    validation_history: list[ValidationResult] = Field(
        default_factory=list, description="Every validation so far, oldest first.")
    gpus: Optional[list[GpuReading]] = Field(None, description="Per-rank GPU readings (null without NVML).")
    mlflow: Optional[MlflowLink] = Field(
        None, description="The run's MLflow run (spec.tracking.mlflow), once the tracking server created it.")
    updated_at: Optional[Timestamp] = Field(None, description="When the trainer wrote it (RFC 3339, UTC).")
    observed_at: Optional[Timestamp] = Field(None, description="When the operator read it (RFC 3339, UTC).")

    def percent(self) -> Optional[int]:
        """Steps done, in whole percent (None when the run's steps are unknown)."""
        return int(100 * self.step / self.steps) if self.steps > 0 else None

    def summary(self) -> str:
        """`12/30 40%`: epoch/epochs and the share of steps done, as the Progress column shows it."""
        percent = self.percent()
        return f"{self.epoch}/{self.epochs}" + (f" {percent}%" if percent is not None else "")

    def eta(self) -> str:
        """The ETA column: `1h05m`, `12m30s`, `45s`, `done` once finished, `-` when unknown."""
        if self.state == "finished":
            return "done"
        if self.eta_seconds is None:
            return "-"
        seconds = max(0, self.eta_seconds)
        hours, minutes = seconds // 3600, seconds % 3600 // 60
        if hours:
            return f"{hours}h{minutes:02d}m"
        return f"{minutes}m{seconds % 60:02d}s" if minutes else f"{seconds}s"

    def advance_key(self) -> tuple[Any, ...]:
        """What must change for the progress to count as new (a heartbeat with the same step does not)."""
        return (self.run_id, self.state, self.epoch, self.step, len(self.validation_history))


class LaneExperimentStatus(StatusModel):
    """Observed state of a LaneExperiment, written only by the operator."""

    phase: Optional[Phase] = Field(None, description="Lifecycle phase.")
    reason: Optional[FailureReason] = Field(None, description="Failure reason when phase is Failed (EarlyStopped when Stopped).")
    message: Optional[str] = Field(None, description="Details of the current phase or failure.")
    conditions: list[Condition] = Field(default_factory=list, description="One condition per step, plus Succeeded/Failed.")
    observed_generation: Optional[int] = Field(None, description="Last metadata.generation acted upon.")
    children: ChildNames = Field(default_factory=ChildNames, description="Names of the child objects.")
    snapshots: list[SnapshotRecord] = Field(default_factory=list, description="VolumeSnapshots taken.")
    results: Optional[Results] = Field(None, description="Evaluation results of the trained model.")
    start_time: Optional[Timestamp] = Field(None, description="When the operator started the experiment.")
    completion_time: Optional[Timestamp] = Field(None, description="When the experiment succeeded or failed.")
    provenance: Optional[Provenance] = Field(None, description="Trainer image, config hash, data source, snapshot.")
    storage_moves: list[StorageMove] = Field(default_factory=list, description="Service-level changes of the volume.")
    progress: Optional[TrainingProgress] = Field(None, description="Live training progress read from the launcher.")
    progress_summary: Optional[str] = Field(None, description="Progress column: epoch/epochs and percent of steps.")
    eta: Optional[str] = Field(None, description="ETA column: estimated time until training ends.")
    mlflow: Optional[MlflowLink] = Field(
        None, description="The experiment's MLflow run (spec.tracking.mlflow), from the trainer's progress.")


# An experiment's phases in the order it goes through them on its way to Succeeded (Failed and Stopped end it).
EXPERIMENT_LIFECYCLE = tuple(p.value for p in Phase if p not in (Phase.FAILED, Phase.STOPPED))
EXPERIMENT_ENDS = (Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.STOPPED.value)


def phase_reached(phase: Optional[str], wanted: str, lifecycle: Sequence[str] = EXPERIMENT_LIFECYCLE,
                  ends: Sequence[str] = EXPERIMENT_ENDS) -> Optional[bool]:
    """Whether something in `phase` has reached `wanted`: True when it is there (or past it on the way to
    the last phase of `lifecycle`), False when it never will be (it ended otherwise), None while it still may.
    `ends`: the phases it never leaves."""
    if phase == wanted:
        return True
    if phase in ends:
        return wanted in lifecycle and phase == lifecycle[-1]  # a phase it went through on the way
    if phase in lifecycle and wanted in lifecycle[:-1] and lifecycle.index(phase) > lifecycle.index(wanted):
        return True
    return None
