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
- `<mount_root>/experiments/<name>`: checkpoints, logs and results of experiment `<name>`;
- `<mount_root>/weights/<sha256>.pth`: pretrained weights fetched from a URL, shared by experiments.

Credentials (`secretRef`s) reach the prepare step only, as folders under `secrets_root` (a mounted
Secret on the cluster, a private folder locally) named on the `lanex data download` command line:
the plan holds Secret names and paths, never a secret value. The one exception is MLflow's
(`tracking.mlflow.credentialsSecretRef`): its keys become the launcher's environment variables
(`SecretEnv`: a secretKeyRef on the cluster, read from `--secret` locally), since that is where
MLflow's client reads them; the plan still names only the Secret and its keys.

Tracking (`tracking.mlflow`) reaches `lanex train` as one variable, LANEX_MLFLOW (server, experiment,
the run's name and tags, the sweep's parent run), set on the launcher and passed on to the ranks.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Optional

from lanex_operator.api.models import (
    DNS_1035_LABEL_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    LABEL_VALUE_PATTERN,
    MAX_WORKERS,
    MLFLOW_CREDENTIAL_KEYS,
    LaneExperimentSpec,
    SecretRef,
    check_experiment_name,
    training_config_hash,
)
from lanex_operator.plan.defaults import ClusterDefaults, Scheduler
from lanex_trainer.preemption import GRACE_ENV

MOUNT_ROOT = "/mnt"
DATA_DIR = "tusimple_data"
EXPERIMENTS_DIR = "experiments"
PREPARED_MARKER = ".lanex-prepared"
TERMINATION_LOG = "/dev/termination-log"
DATA_VOLUME = "data"
SHM_VOLUME = "dshm"
WEIGHTS_DIR = "weights"
SECRETS_ROOT = "/var/run/secrets/lanex"
SECRET_VOLUME_PREFIX = "secret-"
FROM_SCRATCH_REASON = "NoPretrainedWeights"
# mpi-operator starts the processes on workers over ssh. The trainer image (Dockerfile.trainer) runs
# everything as the unprivileged `mpiuser`, with its own sshd configuration on port 2222 and the keys
# mpi-operator mounts at SSH_AUTH_MOUNT_PATH.
TRAINER_USER_ID = 1001
SSH_AUTH_MOUNT_PATH = "/home/mpiuser/.ssh"
# `lanex worker` is PID 1 around sshd: on SIGTERM it lets the ranks below it checkpoint their step
# before sshd (and with it the container) ends (lanex_trainer.worker_entry).
WORKER_COMMAND = ("lanex", "worker", "--", "/usr/sbin/sshd", "-De", "-f", "/home/mpiuser/.sshd_config")
# What the cluster's controllers derive from the children's names (mpi-operator v0.8.2
# pkg/controller/mpi_job_controller.go: launcherSuffix, workerSuffix, configSuffix, sshAuthSecretSuffix;
# the apiserver's generateName adds 5 random characters, the Job controller names pods `<job>-`).
MPI_LAUNCHER_SUFFIX = "-launcher"
MPI_WORKER_SUFFIX = "-worker"
MPI_CONFIG_SUFFIX = "-config"
MPI_SSH_SECRET_SUFFIX = "-ssh"
GENERATED_SUFFIX_LENGTH = 5


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

    def worker_hostname(self, index: int) -> str:
        """mpi-operator's worker pod (and hostname) `<mpijob>-worker-<index>`."""
        return f"{self.mpijob}{MPI_WORKER_SUFFIX}-{index}"

    @property
    def launcher_job(self) -> str:
        """mpi-operator's launcher Job (and the launcher's hostname) `<mpijob>-launcher`."""
        return self.mpijob + MPI_LAUNCHER_SUFFIX


# The naming rules of Kubernetes (k8s.io/apimachinery/pkg/util/validation): pattern, maximum length.
NAME_RULES: dict[str, tuple[str, int]] = {
    "DNS-1035 label": (DNS_1035_LABEL_PATTERN, 63),
    "DNS-1123 label": (DNS_LABEL_PATTERN, 63),
    "DNS-1123 subdomain": (DNS_SUBDOMAIN_PATTERN, 253),
    "label value": (LABEL_VALUE_PATTERN, 63),
}


@dataclass(frozen=True)
class DerivedName:
    """A name that the operator or a cluster controller derives from the experiment's name."""

    what: str
    value: str
    rule: str  # a key of NAME_RULES: the strictest rule that applies to this name

    def problem(self) -> Optional[str]:
        """Why this name breaks its rule, or None."""
        pattern, limit = NAME_RULES[self.rule]
        if len(self.value) > limit:
            return f"{self.what} {self.value!r} is longer than {limit} characters ({self.rule})"
        if not re.fullmatch(pattern, self.value):
            return f"{self.what} {self.value!r} is not a {self.rule}"
        return None


def derived_names(name: str, spec: LaneExperimentSpec, workers: Optional[int] = None) -> tuple[DerivedName, ...]:
    """Every name derived from experiment `name`, with the strictest rule each must follow.

    `workers` (default: the spec's) sets the highest worker index. Generated pod names are given
    with a 5-character placeholder suffix: the apiserver only truncates a generateName prefix longer
    than 58 characters, which would make the pods' names (and hostnames) unpredictable.
    """
    names = child_names(name, spec)
    last_worker = (spec.training.workers if workers is None else workers) - 1
    generated = "x" * GENERATED_SUFFIX_LENGTH
    found = [
        DerivedName("LaneExperiment", name, "DNS-1035 label"),
        DerivedName("label lanex.dev/experiment", name, "label value"),
        DerivedName("prepare Job (its pods' job-name label)", names.prepare_job, "DNS-1123 label"),
        DerivedName("prepare pod", f"{names.prepare_job}-{generated}", "DNS-1123 label"),
        DerivedName("MPIJob (the workers' Service)", names.mpijob, "DNS-1035 label"),
        DerivedName("worker hostname", names.worker_hostname(last_worker), "DNS-1035 label"),
        DerivedName("launcher Job (and hostname)", names.launcher_job, "DNS-1123 label"),
        DerivedName("launcher pod", f"{names.launcher_job}-{generated}", "DNS-1123 label"),
        DerivedName("mpi-operator ConfigMap", names.mpijob + MPI_CONFIG_SUFFIX, "DNS-1123 subdomain"),
        DerivedName("mpi-operator ssh Secret", names.mpijob + MPI_SSH_SECRET_SUFFIX, "DNS-1123 subdomain"),
        DerivedName("VolumeSnapshot", names.snapshot(SNAPSHOT_TIME_PLACEHOLDER), "DNS-1123 subdomain"),
    ]
    if spec.dataset.existing_claim is None:
        found.append(DerivedName("dataset PersistentVolumeClaim", names.dataset_claim, "DNS-1123 subdomain"))
    return tuple(found)


def longest_valid_name_length() -> int:
    """The longest experiment name whose derived names all follow their rules at the most workers the
    API allows (the API's MAX_EXPERIMENT_NAME_LENGTH must equal it: a test checks)."""
    spec = LaneExperimentSpec.model_validate({"dataset": {"synthetic": {}}})
    length = 1
    while all(item.problem() is None for item in derived_names("a" * (length + 1), spec, workers=MAX_WORKERS)):
        length += 1
    return length


@dataclass(frozen=True)
class Mount:
    """A volume mounted into a container."""

    volume: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class SecretMount:
    """A Secret mounted (read-only) into the prepare container as the folder `path`."""

    secret_name: str
    volume: str
    path: str
    fields: tuple[str, ...] = ()  # the spec fields that name it (spec.dataset.download.urls[0].secretRef, ...)


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable whose value is one key of a Secret (absent when the Secret lacks that key)."""

    name: str
    secret_name: str
    key: str
    field: str  # the spec field that names the Secret


@dataclass(frozen=True)
class ContainerRun:
    """What one container (or, locally, one process tree) runs."""

    image: str
    image_pull_policy: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]
    secret_env: tuple[SecretEnv, ...] = ()

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
    # Run before the marker check, on every run: fetching pretrained weights (cached by checksum).
    weights_commands: tuple[tuple[str, ...], ...] = ()
    secret_mounts: tuple[SecretMount, ...] = ()
    service_account_name: Optional[str] = None

    def script(self) -> str:
        """The `sh` script the prepare container runs."""
        return prepare_script(self.commands, self.done_marker, self.weights_commands)


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
    termination_grace_period_seconds: int  # the pods' grace after SIGTERM: the ranks checkpoint their step
    train_command: tuple[str, ...]
    launcher: ContainerRun
    worker: ContainerRun
    kueue_queue: Optional[str] = None  # the Kueue LocalQueue, set exactly with scheduler kueue
    queue_timeout_seconds: Optional[int] = None  # fail when Kueue has not admitted the MPIJob by then
    pretrained_weights: Optional[str] = None  # the file every rank loads (--pretrained-weights)
    from_scratch: Optional[str] = None  # the warning when a backbone that needs ImageNet weights has none


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


# Where a name or object needs a snapshot time before there is one (`lanex render`, name checks):
# a fixed moment, so that the output is reproducible.
SNAPSHOT_TIME_PLACEHOLDER = datetime(2000, 1, 1, tzinfo=timezone.utc)


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


@dataclass(frozen=True)
class TrackingContext:
    """What the spec does not say about an experiment but its MLflow run records: the sweep it is a trial of
    (its name in the experiment's namespace and its uid) and, once known, the sweep's MLflow parent run."""

    sweep: Optional[str] = None
    sweep_uid: Optional[str] = None
    parent_run_id: Optional[str] = None


MLFLOW_SECRET_FIELD = "spec.tracking.mlflow.credentialsSecretRef"


def tracking_secret(spec: LaneExperimentSpec) -> Optional[str]:
    """The Secret with the MLflow server's credentials, read by training (None: none)."""
    mlflow = spec.tracking.mlflow if spec.tracking is not None else None
    ref = mlflow.credentials_secret_ref if mlflow is not None else None
    return ref.name if ref is not None else None


def mlflow_secret_env(spec: LaneExperimentSpec) -> tuple[SecretEnv, ...]:
    """MLflow's credential variables, each from the key of the same name in credentialsSecretRef's Secret."""
    secret = tracking_secret(spec)
    if secret is None:
        return ()
    return tuple(SecretEnv(key, secret, key, MLFLOW_SECRET_FIELD) for key in MLFLOW_CREDENTIAL_KEYS)


def mlflow_env(name: str, namespace: str, spec: LaneExperimentSpec, context: TrackingContext, trainer_image: str,
               dataset: "DatasetStep", dataset_source: str, config_hash: str) -> tuple[tuple[str, str], ...]:
    """LANEX_MLFLOW for `lanex train` (lanex_trainer.config.MlflowConfig), or nothing without tracking."""
    mlflow = spec.tracking.mlflow if spec.tracking is not None else None
    if mlflow is None:
        return ()
    tags = {"lanex.experiment": f"{namespace}/{name}", "lanex.image": trainer_image, "lanex.configHash": config_hash,
            "lanex.datasetSource": dataset_source}
    if dataset.restore_from is not None:
        tags["lanex.datasetSnapshot"] = dataset.restore_from
    if context.sweep is not None:
        tags.update({"lanex.sweep": f"{namespace}/{context.sweep}", "lanex.trial": name})
    if context.sweep_uid is not None:
        tags["lanex.sweepUid"] = context.sweep_uid
    settings = {"tracking_uri": mlflow.tracking_uri, "experiment_name": mlflow.experiment_name,
                "log_best_checkpoint": mlflow.log_best_checkpoint, "run_name": name, "tags": tags,
                "parent_run_id": context.parent_run_id, "sweep_uid": context.sweep_uid}
    return (("LANEX_MLFLOW", json.dumps({k: v for k, v in settings.items() if v is not None}, sort_keys=True,
                                        separators=(",", ":"))),)


def secret_names(spec: LaneExperimentSpec) -> tuple[str, ...]:
    """The Secrets the prepare step reads, each once, in the order the spec names them."""
    return tuple(secret_fields(spec))


def secret_fields(spec: LaneExperimentSpec) -> dict[str, tuple[str, ...]]:
    """Each Secret the prepare step reads (in the order the spec names them) with the spec fields naming it."""
    refs: list[tuple[str, Optional[SecretRef]]] = []
    if spec.dataset.download is not None:
        refs += [(f"spec.dataset.download.urls[{index}].secretRef", entry.secret_ref)
                 for index, entry in enumerate(spec.dataset.download.urls)]
    weights = spec.training.pretrained_weights
    refs.append(("spec.training.pretrainedWeights.secretRef", weights.secret_ref if weights is not None else None))
    found: dict[str, tuple[str, ...]] = {}
    for field, ref in refs:
        if ref is not None:
            found[ref.name] = found.get(ref.name, ()) + (field,)
    return found


def _credentials(secret_ref: Optional[SecretRef], secrets_root: str) -> tuple[str, ...]:
    return ("--credentials", posixpath.join(secrets_root, secret_ref.name)) if secret_ref is not None else ()


def pretrained_weights_path(spec: LaneExperimentSpec, mount_root: str) -> Optional[str]:
    """The weights file every rank loads: `<mount_root>/weights/<sha256>.pth`, or the spec's path."""
    weights = spec.training.pretrained_weights
    if weights is None:
        return None
    if weights.path is not None:
        return posixpath.join(mount_root, weights.path)
    assert weights.sha256 is not None
    return posixpath.join(mount_root, WEIGHTS_DIR, f"{weights.sha256.lower()}.pth")


def weights_commands(spec: LaneExperimentSpec, mount_root: str,
                     secrets_root: str = SECRETS_ROOT) -> tuple[tuple[str, ...], ...]:
    """`lanex data download` of the weights into the volume; a no-op when the file is already there."""
    weights = spec.training.pretrained_weights
    if weights is None or weights.url is None:
        return ()
    target = pretrained_weights_path(spec, mount_root)
    assert target is not None and weights.sha256 is not None
    return ((
        "lanex", "data", "download", "--url", weights.url, "--sha256", weights.sha256.lower(),
        "--out", posixpath.dirname(target), "--save-as", posixpath.basename(target), "--no-extract",
        *_credentials(weights.secret_ref, secrets_root),
    ),)  # fmt: skip


def from_scratch_warning(spec: LaneExperimentSpec) -> Optional[str]:
    """Why training from random initialisation is worth a warning, or None."""
    training = spec.training
    if training.backbone == "vgg16_bn" and training.pretrained_weights is None:
        return ("spec.training.pretrainedWeights is not set: vgg16_bn trains from random initialisation, and the SCNN"
                " recipe needs ImageNet weights (e.g. url https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
                " with its full sha256)")
    return None


def data_commands(spec: LaneExperimentSpec, data_root: str,
                  secrets_root: str = SECRETS_ROOT) -> tuple[tuple[str, ...], ...]:
    """The `lanex data` commands that fill `data_root` (empty for a restored snapshot)."""
    dataset = spec.dataset
    commands: list[tuple[str, ...]] = []
    if dataset.download is not None:
        for entry in dataset.download.urls:
            checksum = ("--sha256", entry.sha256.lower()) if entry.sha256 else ()
            commands.append(("lanex", "data", "download", "--url", entry.url, *checksum, "--out", data_root,
                             *_credentials(entry.secret_ref, secrets_root)))
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


def prepare_script(commands: tuple[tuple[str, ...], ...], done_marker: str,
                   always: tuple[tuple[str, ...], ...] = ()) -> str:
    """`sh` script: run the `always` commands, then exit early if `done_marker` exists, else run every
    command and create it (no marker block when there are no commands: a restored volume has its own)."""
    marker = shlex.quote(done_marker)
    lines = ["set -e", *(shlex.join(command) for command in always)]
    if commands:
        lines += [
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
        # `lanex launch` and `lanex worker` give the ranks this long to checkpoint after a SIGTERM.
        (GRACE_ENV, str(training.termination_grace_period_seconds)),
    ]
    if launcher:
        env.append(("RUNAI_MPI_NUM_WORKERS", str(training.processes())))
    env += [(entry.name, entry.value) for entry in training.env]
    return tuple(env)


def train_command(spec: LaneExperimentSpec, paths: Paths) -> tuple[str, ...]:
    """`lanex train ...` as every training process runs it."""
    training = spec.training
    length = ("--epochs", str(training.epochs)) if training.iterations is None else ("--max-iterations", str(training.iterations))
    weights = pretrained_weights_path(spec, paths.mount_root)
    return (
        "lanex", "train",
        "--data-root", paths.data_root,
        "--output-dir", paths.output_dir,
        "--backbone", training.backbone,
        *length,
        "--lr", repr(training.learning_rate),
        "--height", str(training.height),
        "--width", str(training.width),
        *(("--pretrained-weights", weights) if weights is not None else ()),
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
    secrets_root: str = SECRETS_ROOT,
    context: TrackingContext = TrackingContext(),
) -> ExperimentPlan:
    """The plan of experiment `namespace/name` with the cluster's `defaults` for what the spec leaves
    unset (`context`: its sweep, for its MLflow run); raises InvalidSpecError for an unusable name, or a
    default scheduler that cannot apply."""
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
    commands = data_commands(spec, paths.data_root, secrets_root)
    fetch_weights = weights_commands(spec, mount_root, secrets_root)
    if commands or fetch_weights:
        marker = posixpath.join(paths.data_root, PREPARED_MARKER)
        script = prepare_script(commands, marker, fetch_weights)
        secrets = tuple(SecretMount(secret, f"{SECRET_VOLUME_PREFIX}{index}", posixpath.join(secrets_root, secret),
                                    fields)
                        for index, (secret, fields) in enumerate(secret_fields(spec).items()))
        secret_mounts = tuple(Mount(secret.volume, secret.path, read_only=True) for secret in secrets)
        prepare = PrepareStep(
            commands=commands,
            done_marker=marker,
            backoff_limit=dataset.prepare_backoff_limit,
            container=ContainerRun(effective.trainer_image, training.image_pull_policy, ("sh", "-c", script), (),
                                   data_mount + secret_mounts),
            weights_commands=fetch_weights,
            secret_mounts=secrets,
            service_account_name=dataset.prepare_service_account_name,
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
        termination_grace_period_seconds=training.termination_grace_period_seconds,
        train_command=train_command(spec, paths),
        launcher=ContainerRun(
            effective.trainer_image,
            training.image_pull_policy,
            launch_command(spec, paths),
            # LANEX_JOB: a restarted launcher's run takes the output directory over from the last attempt's.
            training_env(spec, names.dataset_claim, launcher=True) + (("LANEX_JOB", f"{namespace}/{name}"),)
            + mlflow_env(name, namespace, spec, context, effective.trainer_image, dataset_step,
                         dataset.source_description(), training_config_hash(spec)),
            data_mount + shm_mount,
            secret_env=mlflow_secret_env(spec),
        ),
        worker=ContainerRun(
            effective.trainer_image,
            training.image_pull_policy,
            WORKER_COMMAND,
            training_env(spec, names.dataset_claim, launcher=False),
            data_mount + shm_mount,
        ),
        kueue_queue=effective.kueue_queue,
        queue_timeout_seconds=spec.scheduler.queue_timeout_seconds if effective.kueue_queue else None,
        pretrained_weights=pretrained_weights_path(spec, mount_root),
        from_scratch=from_scratch_warning(spec),
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
