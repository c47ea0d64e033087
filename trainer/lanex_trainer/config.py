"""The typed training configuration, validated once at the edge.

Sources, lowest precedence first: defaults, a YAML/JSON config file, TR-4896's environment
interface (`BATCH_SIZE`, `NUM_WORKERS`, ... so its job definitions keep working), then explicit
command-line flags. Everything downstream receives a `TrainConfig` and never reads the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


# SCNN_Pytorch's TuSimple run (experiments/exp0/cfg.json: lr_scheduler.max_iter) at global batch 32.
RECIPE_ITERATIONS = 1500


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the field and the source."""


def yaml_problem(error: "yaml.YAMLError") -> str:
    """A YAML parse error on one line: where, and what (PyYAML's own text spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


class MlflowConfig(BaseModel):
    """Where rank 0 logs the run (MLflow), and what identifies it there. No credentials: MLflow's client reads
    MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str = Field(description="http(s) URL of the MLflow tracking server.", pattern=r"^https?://\S+$")
    experiment_name: str = Field(min_length=1, description="MLflow experiment (created when missing).")
    log_best_checkpoint: bool = Field(False, description="Also upload best.pt as an artifact.")
    run_name: Optional[str] = Field(None, description="The run's name in MLflow (the lanex experiment's name).")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags set when the run is created "
                                 "(lanex.experiment, lanex.sweep, lanex.image, ...).")
    parent_run_id: Optional[str] = Field(None, description="The sweep's MLflow run: this run becomes its child.")
    sweep_uid: Optional[str] = Field(
        None, description="Without parent_run_id: the uid of the sweep whose parent run (tag lanex.sweepUid) is "
        "looked up in the background until it exists, then set as this run's parent.")
    flush_timeout_s: float = Field(
        60.0, ge=0, description="At the end of the run: how long to wait for the sender to upload what is left "
        "(results, pictures, the checkpoint) while the server answers; what is not sent stays in the run's "
        "mlflow/ folder for `lanex mlflow replay`.")


class TrainConfig(BaseModel):
    """Everything one training run needs. Units and reasons are in each field's description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path = Field(description="Prepared TuSimple dataset root (holds lanex_index/).")
    output_dir: Path = Field(description="Checkpoints, TensorBoard logs, results.json and curves go here.")
    backbone: Literal["vgg16_bn", "resnet18", "small"] = Field(
        "vgg16_bn", description="SCNN backbone: vgg16_bn (the paper's), resnet18 (lighter), 'small' (for CPU)."
    )
    pretrained_weights: Optional[Path] = Field(
        None, description="torchvision ImageNet state_dict file of the backbone (vgg16_bn-*.pth, resnet18-*.pth); "
        "never downloaded."
    )
    # Defaults: SCNN_Pytorch's TuSimple recipe (experiments/exp0/cfg.json, 94.16 % with ImageNet
    # VGG16-BN weights): 288x512, batch 32, SGD lr 0.15 Nesterov, 1,500 iterations, 20 of them warm-up.
    height: int = Field(288, ge=16, description="Input height in pixels (multiple of 16).")
    width: int = Field(512, ge=16, description="Input width in pixels (multiple of 16).")
    batch_size: int = Field(32, ge=1, description="Images per worker per step (TR-4896: BATCH_SIZE).")
    epochs: Optional[int] = Field(
        None, ge=1, description="Passes over the training split; unset: as many as max_iterations takes."
    )
    max_iterations: Optional[int] = Field(
        None, ge=1, description="Run length in optimizer steps (the run stops at epochs or here, whichever is "
        f"first); with neither set: {RECIPE_ITERATIONS}, the recipe's."
    )
    lr: float = Field(0.15, gt=0, description="Base learning rate for one worker's batch (see lr_scaling).")
    lr_scaling: Literal["linear", "none"] = Field(
        "linear", description="'linear' multiplies lr by the world size (global batch grows with workers)."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(True, description="Nesterov momentum (SCNN_Pytorch's recipe).")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay.")
    grad_clip_norm: float = Field(
        5.0, gt=0, description="Gradients are clipped to this global L2 norm (SCNN's recurrent message passing "
        "can otherwise blow up in one step early in training)."
    )
    warmup_iterations: Optional[int] = Field(
        None, ge=0, description="Linear warm-up steps from lr/10, then poly decay (power poly_power) to 0; "
        "unset: warmup_fraction of the run."
    )
    warmup_fraction: float = Field(
        20 / 1500, ge=0, lt=1, description="Warm-up as a fraction of the run's steps when warmup_iterations is "
        "unset (SCNN_Pytorch: 20 of 1,500)."
    )
    poly_power: float = Field(0.9, gt=0, description="Exponent of the poly learning-rate decay.")
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored on CPU.")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA (faster convolutions).")
    use_workers: bool = Field(True, description="Multi-process data loading (TR-4896: USE_WORKERS).")
    loader_workers: int = Field(4, ge=0, description="DataLoader worker processes (TR-4896: NUM_WORKERS).")
    validation: bool = Field(True, description="Validate after every epoch (TR-4896: USE_VAL).")
    val_batch_size: int = Field(99, ge=1, description="Validation images per worker per step (TR-4896: VAL_BATCH_SIZE).")
    checkpoint_every: int = Field(200, ge=1, description="Optimizer steps between checkpoints (also at every epoch end).")
    keep_checkpoints: int = Field(3, ge=1, description="Newest periodic checkpoints kept on disk.")
    resume: bool = Field(True, description="Continue from the newest valid checkpoint in output_dir.")
    seed: int = Field(0, description="Seeds model init, shuffling and augmentation.")
    backend: Literal["auto", "torch", "horovod"] = Field(
        "auto", description="Distributed backend; 'auto' picks Horovod under horovodrun, else torch."
    )
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm across workers (torch backend).")
    fp16_allreduce: bool = Field(False, description="Horovod fp16 gradient compression.")
    collective_timeout_s: int = Field(
        300, ge=10, description="A collective that waits longer (e.g. a dead rank) fails the job."
    )
    # Who owns output_dir is not what is learned: excluded from dumps, so from the fingerprint too.
    lease_heartbeat_s: float = Field(
        10.0, gt=0, exclude=True, description="Seconds between renewals of rank 0's lease on output_dir."
    )
    lease_stale_s: float = Field(
        120.0, gt=0, exclude=True, description="A lease not renewed for this long is taken over by the next "
        "training on output_dir (its owner hung or its machine is gone); at least 3 heartbeats."
    )
    background_weight: float = Field(0.4, gt=0, description="Cross-entropy weight of the background class.")
    existence_loss_weight: float = Field(0.1, ge=0, description="Weight of the lane-existence BCE term.")
    lane_width_px: int = Field(16, ge=1, description="Painted lane width in 1280x720 pixels for targets.")
    augment: bool = Field(True, description="Geometric and photometric augmentation of training images.")
    horizontal_flip: bool = Field(
        False, description="Augmentation: mirror half the training images, lane slots swapped left/right "
        "(measured on synthetic data: docs/guides/recipe.md)."
    )
    existence_threshold: float = Field(0.5, gt=0, lt=1, description="Post-processing: keep a lane above this.")
    point_threshold: float = Field(0.3, gt=0, lt=1, description="Post-processing: keep a row's arg-max above this.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses one GPU per local rank if any.")
    log_every: int = Field(10, ge=1, description="Steps between TensorBoard updates.")
    progress_interval: float = Field(
        10.0, gt=0, description="Seconds between progress publications (progress.json and a LANEX_PROGRESS "
        "log line); also at every epoch end and validation (env LANEX_PROGRESS_INTERVAL)."
    )
    # Where the run is logged is not what is learned: excluded from dumps, so from the fingerprint too.
    mlflow: Optional[MlflowConfig] = Field(
        None, exclude=True, description="MLflow tracking by rank 0 (env LANEX_MLFLOW, a JSON object); unset: none."
    )
    enable_snapshot: bool = Field(False, description="TR-4896's ENABLE_SNAPSHOT: logged only (the operator snapshots).")
    pvc_name: Optional[str] = Field(None, description="TR-4896's PVC_NAME: logged only.")

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _recipe_run_length(cls, data: Any) -> Any:
        """No run length given: the recipe's iterations (epochs alone means epochs, uncapped)."""
        if isinstance(data, dict) and data.get("epochs") is None and data.get("max_iterations") is None:
            data = {**data, "max_iterations": RECIPE_ITERATIONS}
        return data

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "TrainConfig":
        if self.lease_stale_s < 3 * self.lease_heartbeat_s:
            raise ValueError(f"lease_stale_s ({self.lease_stale_s:g}) must be at least 3 x lease_heartbeat_s "
                             f"({self.lease_heartbeat_s:g}): a live owner would look stale between two renewals")
        return self

    @model_validator(mode="after")
    def _weights_exist(self) -> "TrainConfig":
        if self.pretrained_weights is not None and not self.pretrained_weights.is_file():
            raise ValueError(f"pretrained_weights: no such file {self.pretrained_weights}")
        return self

    def fingerprint(self) -> str:
        """sha256 of the settings that change what is learned (not paths or logging)."""
        # Run length is not identity: a run may be extended (or cut short) and still resume.
        ignored = {"data_root", "output_dir", "resume", "log_every", "progress_interval", "pvc_name",
                   "enable_snapshot",
                   "epochs", "max_iterations", "checkpoint_every", "keep_checkpoints", "loader_workers",
                   "use_workers", "val_batch_size", "validation", "collective_timeout_s", "device"}
        payload = {k: v for k, v in self.model_dump(mode="json").items() if k not in ignored}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _env_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"environment variable {name}={raw!r}: expected true/false or 1/0")


def _env_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError as error:
        raise ConfigError(f"environment variable {name}={raw!r}: expected an integer") from error


def _env_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError as error:
        raise ConfigError(f"environment variable {name}={raw!r}: expected a number of seconds") from error
    if not value > 0:
        raise ConfigError(f"environment variable {name}={raw!r}: must be more than 0 seconds")
    return value


def _env_json(name: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"environment variable {name}: not a JSON object ({error.msg} at column {error.colno})") from None


# TR-4896's job definitions set these (plus lanex's own launcher variable); each maps onto one field.
TR4896_ENV = {
    "USE_WORKERS": ("use_workers", _env_bool),
    "NUM_WORKERS": ("loader_workers", _env_int),
    "BATCH_SIZE": ("batch_size", _env_int),
    "USE_VAL": ("validation", _env_bool),
    "VAL_BATCH_SIZE": ("val_batch_size", _env_int),
    "ENABLE_SNAPSHOT": ("enable_snapshot", _env_bool),
    "PVC_NAME": ("pvc_name", lambda _name, raw: raw),
    # Set by `lanex launch --backend` for every rank it starts.
    "LANEX_BACKEND": ("backend", lambda _name, raw: raw),
    # lanex's own: progress reporting (PROGRESS_CONTRACT.md).
    "LANEX_PROGRESS_INTERVAL": ("progress_interval", _env_seconds),
    # For `spec.training.env`: how long a silent lease lasts before another training takes it.
    "LANEX_LEASE_STALE_S": ("lease_stale_s", _env_int),
    # Set by lanex's plan from spec.tracking.mlflow (lanex_trainer.tracking).
    "LANEX_MLFLOW": ("mlflow", _env_json),
}


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """TR-4896's environment interface as TrainConfig fields."""
    settings: dict[str, Any] = {}
    for variable, (field, convert) in TR4896_ENV.items():
        if variable in environ:
            settings[field] = convert(variable, environ[variable])
    return settings


def settings_from_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping of TrainConfig fields (snake_case)."""
    try:
        loaded = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path}: not found") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path}: not UTF-8 text: byte offset {error.start}: {error.reason}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path}: not valid YAML/JSON: {yaml_problem(error)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(loaded).__name__}")
    return loaded


def build_config(
    file: Optional[Path] = None,
    environ: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> TrainConfig:
    """Merge defaults < file < environment < overrides and validate once."""
    merged: dict[str, Any] = {}
    if file is not None:
        merged.update(settings_from_file(file))
    merged.update(settings_from_env(os.environ if environ is None else environ))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig(**merged)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"invalid training config: {problems}") from error
