"""The steps of a LaneExperiment, defined once for the operator and the local runner.

An `ExperimentPlan` says, for one experiment, what each step runs: container image, command,
environment and mounts, and the deterministic names of everything it creates. The operator's
builders (`lanex_operator.controller.builders`) turn it into PVC/Job/MPIJob/VolumeSnapshot manifests; the
local runner turns the same commands into processes on a directory that stands in for the
volume (pass `mount_root`). Changing a command here changes both. The plan holds effective values
only: what the spec leaves to the cluster (image, classes, scheduler) is resolved here from the
operator's `ClusterDefaults` (the built-in fallbacks for local runs and the CLI).

Paths inside the dataset volume (TR-4896's layout):
- `<mount_root>/tusimple_data`: the dataset, marked prepared by `.lanex-prepared`;
- `<mount_root>/experiments/<name>`: checkpoints, logs and results of experiment `<name>`.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Optional

from lanex_operator.api.models import (
    LaneExperimentSpec,
    check_experiment_name,
    training_config_hash,
)
from lanex_operator.plan.defaults import ClusterDefaults, Scheduler

MOUNT_ROOT = "/mnt"
DATA_DIR = "tusimple_data"
EXPERIMENTS_DIR = "experiments"
PREPARED_MARKER = ".lanex-prepared"
TERMINATION_LOG = "/dev/termination-log"
DATA_VOLUME = "data"
SHM_VOLUME = "dshm"
# mpi-operator starts the processes on workers over ssh. The trainer image (Dockerfile.trainer) runs
# everything as the unprivileged `mpiuser`, with its own sshd configuration on port 2222 and the keys
# mpi-operator mounts at SSH_AUTH_MOUNT_PATH.
TRAINER_USER_ID = 1001
SSH_AUTH_MOUNT_PATH = "/home/mpiuser/.ssh"
WORKER_COMMAND = ("/usr/sbin/sshd", "-De", "-f", "/home/mpiuser/.sshd_config")


class StepName(str, Enum):
    """The steps of an experiment, in the order they run."""

    DATASET = "dataset"
    PREPARE = "prepare"
    SHARE = "share"
    TRAIN = "train"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class Paths:
    """Where things live once the dataset volume is mounted at `mount_root`."""

    mount_root: str
    data_root: str
    output_dir: str
    termination_log: str


@dataclass(frozen=True)
class ChildNames:
    """Deterministic names of the experiment's children (the same on every reconcile)."""

    experiment: str
    dataset_claim: str
    prepare_job: str
    mpijob: str

    def snapshot(self, at: datetime) -> str:
        """Name of the snapshot taken at `at`."""
        return snapshot_name(self.experiment, at)


@dataclass(frozen=True)
class Mount:
    """A volume mounted into a container."""

    volume: str
    path: str


@dataclass(frozen=True)
class ContainerRun:
    """What one container (or, locally, one process tree) runs."""

    image: str
    image_pull_policy: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]

    def env_dict(self) -> dict[str, str]:
        """The environment as a dict (later entries win, as in Kubernetes)."""
        return dict(self.env)


@dataclass(frozen=True)
class DatasetStep:
    """The dataset volume: created, restored from a snapshot, or an existing claim."""

    source: str  # download | synthetic | existingClaim | fromSnapshot
    claim_name: str
    creates_claim: bool
    restore_from: Optional[str]
    storage_class_name: str
    size: str
    access_modes: tuple[str, ...] = ("ReadWriteMany",)


@dataclass(frozen=True)
class PrepareStep:
    """Fill the volume with prepared data; a marker file makes it a no-op the second time."""

    commands: tuple[tuple[str, ...], ...]
    done_marker: str
    backoff_limit: int
    container: ContainerRun

    def script(self) -> str:
        """The `sh` script the prepare container runs."""
        return prepare_script(self.commands, self.done_marker)


@dataclass(frozen=True)
class TrainStep:
    """Distributed training: one launcher running `lanex launch`, `workers` workers."""

    backend: str
    scheduler: Scheduler
    runai_project: Optional[str]  # the RUN:ai project (label `project`), set exactly with scheduler runai
    workers: int
    gpus_per_worker: int
    processes: int
    slots_per_worker: int
    large_shm: bool
    backoff_limit: int
    active_deadline_seconds: Optional[int]
    train_command: tuple[str, ...]
    launcher: ContainerRun
    worker: ContainerRun


@dataclass(frozen=True)
class SnapshotStep:
    """The CSI snapshot of the dataset volume after training."""

    source_claim: str
    volume_snapshot_class_name: str
    on_failure: bool
    ready_timeout_seconds: int


@dataclass(frozen=True)
class ExperimentPlan:
    """Everything an experiment will run and create, derived from its name and spec only."""

    name: str
    namespace: str
    paths: Paths
    names: ChildNames
    dataset: DatasetStep
    prepare: Optional[PrepareStep]
    train: TrainStep
    snapshot: Optional[SnapshotStep]
    trainer_image: str
    config_hash: str
    dataset_source: str
    defaulted: tuple[str, ...] = ()  # spec fields the cluster's defaults filled in ("spec.training.image", ...)

    @property
    def steps(self) -> tuple[StepName, ...]:
        """The steps this experiment runs, in order (no prepare on restore, no snapshot if disabled)."""
        steps = [StepName.DATASET]
        if self.prepare is not None:
            steps.append(StepName.PREPARE)
        steps += [StepName.SHARE, StepName.TRAIN]
        if self.snapshot is not None:
            steps.append(StepName.SNAPSHOT)
        return tuple(steps)


def snapshot_name(experiment: str, at: datetime) -> str:
    """`<experiment>-<UTC yyyymmddhhmmss>`; a naive `at` is taken as UTC."""
    moment = at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
    return f"{experiment}-{moment.astimezone(timezone.utc).strftime('%Y%m%d%H%M%S')}"


def child_names(name: str, spec: LaneExperimentSpec) -> ChildNames:
    """The children's names: `<name>-data` (or the existing claim), `<name>-prepare`, `<name>-train`."""
    existing = spec.dataset.existing_claim
    return ChildNames(
        experiment=name,
        dataset_claim=existing.claim_name if existing is not None else f"{name}-data",
        prepare_job=f"{name}-prepare",
        mpijob=f"{name}-train",
    )


def experiment_paths(name: str, mount_root: str = MOUNT_ROOT, termination_log: str = TERMINATION_LOG) -> Paths:
    """Dataset root and output directory of experiment `name` under `mount_root`."""
    return Paths(
        mount_root=mount_root,
        data_root=posixpath.join(mount_root, DATA_DIR),
        output_dir=posixpath.join(mount_root, EXPERIMENTS_DIR, name),
        termination_log=termination_log,
    )


def data_commands(spec: LaneExperimentSpec, data_root: str) -> tuple[tuple[str, ...], ...]:
    """The `lanex data` commands that fill `data_root` (empty for a restored snapshot)."""
    dataset = spec.dataset
    commands: list[tuple[str, ...]] = []
    if dataset.download is not None:
        for entry in dataset.download.urls:
            checksum = ("--sha256", entry.sha256.lower()) if entry.sha256 else ()
            commands.append(("lanex", "data", "download", "--url", entry.url, *checksum, "--out", data_root))
    elif dataset.synthetic is not None:
        synthetic = dataset.synthetic
        test = ("--test-clips", str(synthetic.test_clips)) if synthetic.test_clips else ()
        commands.append(
            ("lanex", "data", "synth", "--out", data_root, "--clips", str(synthetic.clips), "--seed", str(synthetic.seed), *test)
        )
    elif dataset.from_snapshot is not None:
        return ()
    commands.append(("lanex", "data", "prepare", "--root", data_root))
    return tuple(commands)


def prepare_script(commands: tuple[tuple[str, ...], ...], done_marker: str) -> str:
    """`sh` script: exit early if `done_marker` exists, else run every command and create it."""
    marker = shlex.quote(done_marker)
    lines = [
        "set -e",
        f'if [ -f {marker} ]; then echo "lanex: dataset already prepared ({done_marker})"; exit 0; fi',
        *(shlex.join(command) for command in commands),
        f"touch {marker}",
    ]
    return "\n".join(lines) + "\n"


def training_env(spec: LaneExperimentSpec, claim_name: str, *, launcher: bool) -> tuple[tuple[str, str], ...]:
    """TR-4896's environment variables, then the spec's extra ones (names never collide: the API forbids it)."""
    training = spec.training
    env = [
        ("USE_WORKERS", _flag(training.use_workers)),
        ("NUM_WORKERS", str(training.loader_workers)),
        ("BATCH_SIZE", str(training.batch_size)),
        ("USE_VAL", _flag(training.validation.enabled)),
        ("VAL_BATCH_SIZE", str(training.validation.batch_size)),
        ("ENABLE_SNAPSHOT", _flag(spec.snapshot.enabled)),
        ("PVC_NAME", claim_name),
    ]
    if launcher:
        env.append(("RUNAI_MPI_NUM_WORKERS", str(training.processes())))
    env += [(entry.name, entry.value) for entry in training.env]
    return tuple(env)


def train_command(spec: LaneExperimentSpec, paths: Paths) -> tuple[str, ...]:
    """`lanex train ...` as every training process runs it."""
    training = spec.training
    length = ("--epochs", str(training.epochs)) if training.iterations is None else ("--max-iterations", str(training.iterations))
    return (
        "lanex", "train",
        "--data-root", paths.data_root,
        "--output-dir", paths.output_dir,
        "--backbone", training.backbone,
        *length,
        "--lr", repr(training.learning_rate),
        "--height", str(training.height),
        "--width", str(training.width),
    )  # fmt: skip


def launch_command(spec: LaneExperimentSpec, paths: Paths) -> tuple[str, ...]:
    """`lanex launch ... -- lanex train ...`: the launcher starts all processes and reports results."""
    training = spec.training
    return (
        "lanex", "launch",
        "--backend", training.backend,
        "--processes", str(training.processes()),
        "--termination-log", paths.termination_log,
        "--", *train_command(spec, paths),
    )  # fmt: skip


def plan_for(
    name: str,
    namespace: str,
    spec: LaneExperimentSpec,
    *,
    mount_root: str = MOUNT_ROOT,
    termination_log: str = TERMINATION_LOG,
    defaults: ClusterDefaults = ClusterDefaults(),
) -> ExperimentPlan:
    """The plan of experiment `namespace/name` with the cluster's `defaults` for what the spec leaves
    unset; raises InvalidSpecError for an unusable name, or a default scheduler that cannot apply."""
    check_experiment_name(name)
    effective = defaults.resolve(namespace, spec)
    paths = experiment_paths(name, mount_root, termination_log)
    names = child_names(name, spec)
    training = spec.training
    data_mount = (Mount(DATA_VOLUME, mount_root),)
    shm_mount = (Mount(SHM_VOLUME, "/dev/shm"),) if training.large_shm else ()

    dataset = spec.dataset
    dataset_step = DatasetStep(
        source=dataset.source_kind(),
        claim_name=names.dataset_claim,
        creates_claim=dataset.existing_claim is None,
        restore_from=dataset.from_snapshot.snapshot_name if dataset.from_snapshot is not None else None,
        storage_class_name=effective.storage_class_name,
        size=dataset.size,
    )

    prepare = None
    commands = data_commands(spec, paths.data_root)
    if commands:
        marker = posixpath.join(paths.data_root, PREPARED_MARKER)
        script = prepare_script(commands, marker)
        prepare = PrepareStep(
            commands=commands,
            done_marker=marker,
            backoff_limit=dataset.prepare_backoff_limit,
            container=ContainerRun(effective.trainer_image, training.image_pull_policy, ("sh", "-c", script), (),
                                   data_mount),
        )

    train = TrainStep(
        backend=training.backend,
        scheduler=effective.scheduler,
        runai_project=effective.runai_project,
        workers=training.workers,
        gpus_per_worker=training.gpus_per_worker,
        processes=training.processes(),
        slots_per_worker=max(1, training.gpus_per_worker),
        large_shm=training.large_shm,
        backoff_limit=training.backoff_limit,
        active_deadline_seconds=training.active_deadline_seconds,
        train_command=train_command(spec, paths),
        launcher=ContainerRun(
            effective.trainer_image,
            training.image_pull_policy,
            launch_command(spec, paths),
            training_env(spec, names.dataset_claim, launcher=True),
            data_mount + shm_mount,
        ),
        worker=ContainerRun(
            effective.trainer_image,
            training.image_pull_policy,
            WORKER_COMMAND,
            training_env(spec, names.dataset_claim, launcher=False),
            data_mount + shm_mount,
        ),
    )

    snapshot = None
    if spec.snapshot.enabled:
        snapshot = SnapshotStep(
            source_claim=names.dataset_claim,
            volume_snapshot_class_name=effective.volume_snapshot_class_name,
            on_failure=spec.snapshot.on_failure,
            ready_timeout_seconds=spec.snapshot.ready_timeout_seconds,
        )

    return ExperimentPlan(
        name=name,
        namespace=namespace,
        paths=paths,
        names=names,
        dataset=dataset_step,
        prepare=prepare,
        train=train,
        snapshot=snapshot,
        trainer_image=effective.trainer_image,
        config_hash=training_config_hash(spec),
        dataset_source=dataset.source_description(),
        defaulted=effective.defaulted,
    )


def _flag(value: bool) -> str:
    # TR-4896's script reads these as strings; lanex writes "true"/"false".
    return "true" if value else "false"
