"""Status of a LaneExperiment: phase, conditions, children, snapshots, results, provenance.

Written only by the operator. The models read leniently (kopf keeps its own fields under
`status` too), and the CRD keeps unknown status fields for the same reason.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
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
