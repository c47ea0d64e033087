"""The LaneExperiment API: one typed source of truth for the spec and its validation.

The status models live in `api.status` and are re-exported here, so `api.models` names the
whole API. The CRD schema (`api.crd`), the field reference (`api.docs`) and the operator's InvalidSpec
messages are all generated from these models, so a field is declared, documented and
constrained exactly once. Defaults reproduce the run of NetApp TR-4896 (3 workers x 1 GPU,
batch 33, 4 loader workers, Horovod). The cluster-level choices (trainer image, storage class,
snapshot class, scheduler) have no API default: left unset, the operator fills them in from its
cluster defaults (`lanex_operator.plan.defaults`, the chart's `defaults.*` values), which an API-server
default would otherwise always override.

YAML uses camelCase (`gpusPerWorker`), Python snake_case (`gpus_per_worker`). The spec is
strict: no type coercion ("3" is not an int), unknown fields are errors, so what the CRD
schema rejects the models reject too and vice versa.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from lanex_operator.api.fields import PositiveQuantity, Quantity
from lanex_trainer.data.urls import has_userinfo, redact_url
from lanex_trainer.preemption import DEFAULT_GRACE_SECONDS
from lanex_operator.api.status import (  # noqa: F401  (re-exported: api.models names the whole API)
    ChildNames,
    Condition,
    ConditionType,
    FailureReason,
    GpuReading,
    LaneExperimentStatus,
    MlflowLink,
    Phase,
    Provenance,
    Results,
    SnapshotError,
    SnapshotRecord,
    StorageMove,
    TrainingProgress,
    ValidationResult,
)

GROUP = "lanex.dev"
VERSION = "v1alpha1"
KIND = "LaneExperiment"
PLURAL = "laneexperiments"
SINGULAR = "laneexperiment"
SHORT_NAME = "lx"
API_VERSION = f"{GROUP}/{VERSION}"
# On a LaneExperiment: end its training now (its MPIJob deleted), phase Stopped; the value says why. Set by
# a LaneSweep's early stopping, by `lanex stop NAME`, and by the dashboard's Stop.
STOP_ANNOTATION = "lanex.dev/stop"

# Every name derived from an experiment's must stay valid for the strictest rule that applies to it;
# the longest of them is the launcher pod `<name>-train-launcher-xxxxx`, a DNS-1123 label (63), so 42.
# `lanex_operator.plan.steps.longest_valid_name_length()` computes it from the name builders (a test checks).
MAX_EXPERIMENT_NAME_LENGTH = 42
MAX_WORKERS = 512
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# mpi-operator needs the MPIJob's name (its Service) and `<mpijob>-worker-<N-1>` to be DNS-1035 labels.
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
EXPERIMENT_NAME_RULE = (
    f"a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, ending with a letter or digit)"
    f" of at most {MAX_EXPERIMENT_NAME_LENGTH} characters, so that every name derived from it (MPIJob and its"
    f" Service, worker hostnames up to -worker-{MAX_WORKERS - 1}, launcher pod, Job, PVC, snapshot) stays valid"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

# Environment variables of TR-4896's training script, set by lanex from typed fields.
RESERVED_ENV_NAMES = (
    "USE_WORKERS",
    "NUM_WORKERS",
    "BATCH_SIZE",
    "USE_VAL",
    "VAL_BATCH_SIZE",
    "ENABLE_SNAPSHOT",
    "PVC_NAME",
    "RUNAI_MPI_NUM_WORKERS",
)


class InvalidSpecError(ValueError):
    """A LaneExperiment that cannot run; the message names every bad field as `spec.a.b: why`."""

    def __init__(self, message: str, problems: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems if problems is not None else [message]


class SpecModel(BaseModel):
    """Base of every spec section: camelCase aliases, strict types, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


def _section(model: type[BaseModel], description: str) -> Any:
    # A section whose fields all have defaults may be left out; `default: {}` in the CRD lets
    # the API server fill in the nested defaults the same way pydantic does.
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})


# --- spec: dataset ----------------------------------------------------------------------


DOWNLOAD_URL_PATTERN = r"^(https?|file|az)://\S+$"
SECRET_KEYS_HELP = (
    "Keys: `sas` = a SAS query string appended to the request; any other key = an HTTP header sent with it"
    " (e.g. Authorization)."
)


class SecretRef(SpecModel):
    """A Secret in the experiment's namespace, mounted into the prepare Job only (never into training)."""

    name: str = Field(
        description="Name of the Secret in the experiment's namespace; locally, `lanex run FILE --secret"
        " NAME=file:PATH|env:VAR` supplies it.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )


# Bounds the API server needs to price the URL rules below: it refuses a CRD whose CEL rules could
# cost more than its budget on the largest input the schema allows, and an unbounded string in an
# unbounded list is assumed to be as large as a whole request. Real URLs are far shorter.
MAX_URL_LENGTH = 2048
MAX_DOWNLOAD_URLS = 32


def _url_rules(optional: bool, field: str = "url", ref: str = "secretRef",
               query_hint: str = " (key sas)") -> list[dict[str, str]]:
    # The API server's side of `_no_secret_in_url`: CEL, since a pattern cannot say why.
    guard = f"!has(self.{field}) || " if optional else ""
    return [
        {"rule": f"{guard}!self.{field}.contains('?')",
         "message": f"{field} must not hold a query string: put it into the Secret named by {ref}{query_hint}"},
        {"rule": f"{guard}!self.{field}.matches('^[a-z]+://[^/]*@')",
         "message": f"{field} must not hold user:password: put credentials into the Secret named by {ref}"},
    ]


def _no_secret_in_url(url: Optional[str], field: str = "url", ref: str = "secretRef",
                      query_hint: str = " (key sas: appended to the request)") -> None:
    # Everyone who can read the experiment reads its URLs: credentials belong in a Secret.
    if url is None:
        return
    if has_userinfo(url):
        raise PydanticCustomError(
            "secret_in_url", "must not hold user:password; put credentials into a Secret named by {ref}",
            {"field": field, "ref": ref})
    if "?" in url:  # a SAS or presigned query is a secret, and the manifests must show no query string
        raise PydanticCustomError(
            "secret_in_url", "must not hold a query string; put it into a Secret{hint} named by {ref}",
            {"field": field, "ref": ref, "hint": query_hint})


class DownloadUrl(SpecModel):
    """One archive or file to download into the dataset volume."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _url_rules(optional=False)})

    url: str = Field(
        description="http://, https://, file://, az://ACCOUNT/CONTAINER/PATH or https://ACCOUNT.blob.core.windows.net/"
        " URL of an archive (zip/tar) or file; archives are extracted. Blob URLs are read with the secretRef's SAS,"
        " else the prepare Job's Azure workload identity (a secretRef of HTTP header keys is refused for them: Blob"
        " reads never send it). No credentials and no query string here: use secretRef.",
        pattern=DOWNLOAD_URL_PATTERN,
        max_length=MAX_URL_LENGTH,
    )
    sha256: Optional[str] = Field(
        None,
        description="Expected SHA-256 of the downloaded file (64 hex digits); the download fails on mismatch.",
        pattern=r"^[0-9a-fA-F]{64}$",
    )
    secret_ref: Optional[SecretRef] = Field(
        None, description=f"Secret with the credentials of this URL, mounted into the prepare Job only. {SECRET_KEYS_HELP}"
    )

    @model_validator(mode="after")
    def _credentials_not_in_url(self) -> "DownloadUrl":
        _no_secret_in_url(self.url)
        return self


class DownloadSource(SpecModel):
    """Download the dataset (TuSimple train set and test labels) from configurable URLs."""

    urls: list[DownloadUrl] = Field(description="Files to download, in order.", min_length=1,
                                    max_length=MAX_DOWNLOAD_URLS)


class SyntheticSource(SpecModel):
    """Generate a synthetic road-scene dataset in the exact TuSimple layout (no download)."""

    clips: int = Field(300, description="Number of training+validation clips to generate.", ge=1)
    seed: int = Field(0, description="Random seed; the same seed gives byte-identical data.", ge=0)
    test_clips: Optional[int] = Field(
        None, description="Number of test clips (default: clips // 4).", ge=1
    )


class ExistingClaimSource(SpecModel):
    """Use a PersistentVolumeClaim that already holds the dataset (it is never deleted by lanex)."""

    claim_name: str = Field(
        description="Name of the PVC in the experiment's namespace.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )


class SnapshotSource(SpecModel):
    """Restore the dataset volume from a VolumeSnapshot taken by an earlier experiment."""

    snapshot_name: str = Field(
        description="Name of the VolumeSnapshot in the experiment's namespace.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )


DATASET_SOURCES = ("download", "synthetic", "existingClaim", "fromSnapshot")


class DatasetSpec(SpecModel):
    """The dataset volume and where its data comes from (exactly one source)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": [source]} for source in DATASET_SOURCES],
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.download), has(self.synthetic), has(self.existingClaim),"
                    " has(self.fromSnapshot)].filter(x, x).size() == 1",
                    "message": "exactly one of download, synthetic, existingClaim, fromSnapshot must be set",
                }
            ],
        }
    )

    download: Optional[DownloadSource] = Field(None, description="Download the data from URLs.")
    synthetic: Optional[SyntheticSource] = Field(None, description="Generate synthetic TuSimple-format data.")
    existing_claim: Optional[ExistingClaimSource] = Field(
        None, description="Use an existing PVC that holds the data."
    )
    from_snapshot: Optional[SnapshotSource] = Field(
        None, description="Restore a new PVC from a VolumeSnapshot (data already prepared)."
    )
    storage_class_name: Optional[str] = Field(
        None,
        description="StorageClass of the dataset PVC; unset: the operator's default (chart value "
        "defaults.storageClassName; built in: azurenetappfiles, TR-4896's Trident on Azure NetApp Files).",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )
    size: PositiveQuantity = Field(
        "100Gi",
        description="Requested size of the dataset PVC, a Kubernetes quantity; a restore gets at least the snapshot's restoreSize.",
    )
    prepare_backoff_limit: int = Field(
        2, description="Retries of the download/prepare Job before the experiment fails.", ge=0, le=20
    )
    prepare_service_account_name: Optional[str] = Field(
        None,
        description="ServiceAccount of the download/prepare Job. For az:// and *.blob.core.windows.net URLs without"
        " a SAS, one federated with an Azure managed identity that may read the blobs (Azure workload identity: the"
        " pod gets label azure.workload.identity/use=true).",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "DatasetSpec":
        chosen = self.sources()
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise PydanticCustomError(
                "dataset_source",
                "exactly one of download, synthetic, existingClaim, fromSnapshot must be set (got: {got})",
                {"got": got},
            )
        return self

    def sources(self) -> list[str]:
        """The camelCase names of the sources that are set."""
        values = (self.download, self.synthetic, self.existing_claim, self.from_snapshot)
        return [name for name, value in zip(DATASET_SOURCES, values) if value is not None]

    def source_kind(self) -> str:
        """`download`, `synthetic`, `existingClaim` or `fromSnapshot`."""
        return self.sources()[0]

    def source_description(self) -> str:
        """A one-line, reproducible description of the source (recorded in status.provenance)."""
        if self.download is not None:
            return "download:" + ",".join(
                redact_url(entry.url)
                + (f"#sha256={entry.sha256}" if entry.sha256 else "")
                + (f"#secretRef={entry.secret_ref.name}" if entry.secret_ref else "")
                for entry in self.download.urls
            )
        if self.synthetic is not None:
            test = f",testClips={self.synthetic.test_clips}" if self.synthetic.test_clips else ""
            return f"synthetic:clips={self.synthetic.clips},seed={self.synthetic.seed}{test}"
        if self.existing_claim is not None:
            return f"existingClaim:{self.existing_claim.claim_name}"
        assert self.from_snapshot is not None
        return f"fromSnapshot:{self.from_snapshot.snapshot_name}"


# --- spec: training ---------------------------------------------------------------------


class ValidationSpec(SpecModel):
    """Validation pass after each epoch (TR-4896's USE_VAL and VAL_BATCH_SIZE)."""

    enabled: bool = Field(True, description="Run validation after each epoch (env USE_VAL).")
    batch_size: int = Field(99, description="Validation batch size per worker (env VAL_BATCH_SIZE).", ge=1)


class ResourceRequirements(SpecModel):
    """Extra resources for each worker container; GPUs come from gpusPerWorker."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Resource requests, e.g. {cpu: 4, memory: 32Gi}."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Resource limits, e.g. {memory: 64Gi}.")


class Toleration(SpecModel):
    """A pod toleration (same meaning as in a Pod spec)."""

    key: Optional[str] = Field(None, description="Taint key to tolerate; empty with Exists tolerates every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: Optional[str] = Field(None, description="Taint value to match with Equal.")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(
        None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: Optional[int] = Field(
        None, description="How long a NoExecute taint is tolerated, in seconds.", ge=0
    )


class EnvVar(SpecModel):
    """An extra environment variable for the training containers."""

    name: str = Field(
        description="Variable name; TR-4896's variables set by lanex (BATCH_SIZE, ...) are not allowed here.",
        pattern=ENV_NAME_PATTERN,
        min_length=1,
        json_schema_extra={"not": {"enum": list(RESERVED_ENV_NAMES)}},
    )
    value: str = Field("", description="Variable value (a string: quote numbers).")

    @model_validator(mode="after")
    def _not_reserved(self) -> "EnvVar":
        if self.name in RESERVED_ENV_NAMES:
            raise PydanticCustomError(
                "reserved_env",
                "{name} is set by lanex from a typed training field; set that field instead",
                {"name": self.name, "field": "name"},
            )
        return self


class PretrainedWeights(SpecModel):
    """ImageNet weights of the backbone: a file to fetch once into the volume, or one already on it."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["url", "sha256"]}, {"required": ["path"]}],
            "x-kubernetes-validations": [
                {"rule": "has(self.url) != has(self.path)", "message": "exactly one of url, path must be set"},
                {"rule": "!has(self.url) || has(self.sha256)", "message": "sha256 is required with url"},
                {"rule": "has(self.url) || (!has(self.sha256) && !has(self.secretRef))",
                 "message": "sha256 and secretRef are only allowed with url"},
                *_url_rules(optional=True),
            ],
        }
    )

    url: Optional[str] = Field(
        None,
        description="Where to fetch the weights (same rules and credentials as spec.dataset.download.urls[].url), e.g."
        " torchvision's https://download.pytorch.org/models/vgg16_bn-6c64b313.pth. The prepare Job fetches it once"
        " into <volume>/weights/<sha256>.pth; a volume that has it (e.g. a restored snapshot) is not fetched again.",
        pattern=DOWNLOAD_URL_PATTERN,
        max_length=MAX_URL_LENGTH,
    )
    sha256: Optional[str] = Field(
        None,
        description="SHA-256 of the file, all 64 hex digits (a prefix such as the 8 in torchvision's file names is"
        " no integrity check for a file fetched from a URL; `sha256sum` it once). Required with url; the file is"
        " cached as <volume>/weights/<sha256>.pth (a file cached earlier under a prefix is named with path).",
        pattern=r"^[0-9a-fA-F]{64}$",
    )
    secret_ref: Optional[SecretRef] = Field(
        None, description=f"Secret with the credentials of url, mounted into the prepare Job only. {SECRET_KEYS_HELP}"
    )
    path: Optional[str] = Field(
        None,
        description="A weights file already on the dataset volume, relative to its root (e.g. weights/vgg16_bn.pth).",
        pattern=r"^[^/\s]\S*$",
        max_length=1024,
    )

    @model_validator(mode="after")
    def _one_place(self) -> "PretrainedWeights":
        if (self.url is None) == (self.path is None):
            raise PydanticCustomError("weights_source", "exactly one of url, path must be set", {})
        if self.url is not None and self.sha256 is None:
            raise PydanticCustomError("weights_sha256", "required with url", {"field": "sha256"})
        if self.path is not None and (self.sha256 is not None or self.secret_ref is not None):
            raise PydanticCustomError("weights_path", "sha256 and secretRef are only allowed with url", {})
        if self.path is not None and ".." in self.path.split("/"):
            raise PydanticCustomError("weights_path", "must stay inside the volume (no '..')", {"field": "path"})
        _no_secret_in_url(self.url)
        return self


class TrainingSpec(SpecModel):
    """The distributed training job (an MPIJob with one launcher and `workers` workers)."""

    image: Optional[str] = Field(
        None,
        description="Trainer image (runs `lanex data ...`, `lanex launch` and `lanex train`, and sshd on workers);"
        " unset: the operator's default (chart value defaults.trainerImage; built in: ghcr.io/lanex/trainer:0.1.0).",
        pattern=r"^\S+$",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the trainer image."
    )
    backend: Literal["horovod", "torch"] = Field(
        "horovod", description="Distributed backend: horovod (TR-4896) or torch (DistributedDataParallel)."
    )
    backbone: Literal["vgg16_bn", "resnet18", "small"] = Field(
        "vgg16_bn",
        description="SCNN backbone: vgg16_bn (the paper's), resnet18 (lighter) or small (fast, for CPUs and demos).",
    )
    workers: int = Field(3, description="Number of worker pods (TR-4896: 3 nodes).", ge=1, le=MAX_WORKERS)
    gpus_per_worker: int = Field(
        1, description="GPUs per worker (nvidia.com/gpu); one process per GPU; 0 runs on CPU.", ge=0, le=16
    )
    batch_size: int = Field(33, description="Training batch size per process (env BATCH_SIZE).", ge=1)
    loader_workers: int = Field(4, description="Data-loader processes per training process (env NUM_WORKERS).", ge=0)
    use_workers: bool = Field(True, description="Load data in worker processes (env USE_WORKERS).")
    validation: ValidationSpec = _section(ValidationSpec, "Validation after each epoch.")
    epochs: int = Field(30, description="Number of training epochs (ignored when iterations is set).", ge=1, le=10000)
    iterations: Optional[int] = Field(
        None,
        description="Run length in optimizer steps, replacing epochs (the published recipe: 1500 at a global batch"
        " of 32); warm-up is 1.3 % of the run.",
        ge=1,
        le=10_000_000,
    )
    learning_rate: float = Field(
        0.05, description="Base learning rate of SGD (momentum 0.9, poly decay).", gt=0, le=10
    )
    height: int = Field(288, description="Input height in pixels, a multiple of 16.", ge=16, le=2048, multiple_of=16)
    width: int = Field(800, description="Input width in pixels, a multiple of 16.", ge=16, le=4096, multiple_of=16)
    large_shm: bool = Field(
        True, description="Mount a memory-backed /dev/shm in the pods (runai --large-shm), needed by data loaders."
    )
    resources: ResourceRequirements = _section(ResourceRequirements, "Extra worker resources (CPU, memory).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the worker pods require.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of the worker pods.")
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra environment variables for launcher and workers (names must be unique).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    backoff_limit: int = Field(
        3,
        description="Launcher restarts (each resumes from the last checkpoint) before training fails.",
        ge=0,
        le=100,
    )
    active_deadline_seconds: Optional[int] = Field(
        None, description="Fail training (reason Timeout) after this many seconds; unset means no limit.", ge=1
    )
    pretrained_weights: Optional[PretrainedWeights] = Field(
        None,
        description="ImageNet weights of the backbone, passed to every rank as --pretrained-weights. vgg16_bn without"
        " them trains from scratch (condition TrainingFromScratch and a Warning Event).",
    )
    stall_timeout_seconds: int = Field(
        1800,
        description="Seconds without new training progress (while the MPIJob runs) before the Stalled condition.",
        ge=1,
    )
    stall_action: Literal["None", "Restart"] = Field(
        "None",
        description="On a stall: None (condition and Warning Event only) or Restart (delete the launcher pod; its"
        " launcher Job starts a new one that resumes from the last checkpoint, using one of backoffLimit's retries).",
    )
    termination_grace_period_seconds: int = Field(
        DEFAULT_GRACE_SECONDS,
        description="Seconds the launcher and worker pods get between SIGTERM (eviction, Kueue preemption, deletion)"
        " and SIGKILL: every rank finishes its step and rank 0 checkpoints it, so the next start loses no step. The"
        f" default ({DEFAULT_GRACE_SECONDS}) fits a VGG16 checkpoint (158 MiB) written to a 100 GiB Standard ANF"
        " volume (1.6 MiB/s), one step and one validation pass.",
        ge=10,
        le=3600,
    )

    @model_validator(mode="after")
    def _unique_env(self) -> "TrainingSpec":
        seen: set[str] = set()
        for entry in self.env:
            if entry.name in seen:
                raise PydanticCustomError(
                    "duplicate_env", "variable {name} is set twice", {"name": entry.name, "field": "env"}
                )
            seen.add(entry.name)
        return self

    def processes(self) -> int:
        """Training processes in total: one per GPU, or one per worker on CPU."""
        return self.workers * max(1, self.gpus_per_worker)


# --- spec: scheduler, snapshot, retention, storage --------------------------------------


class SchedulerSpec(SpecModel):
    """Which scheduler places the pods: RUN:ai (with a project) or the default Kubeflow/Kubernetes one."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"properties": {"type": {"enum": ["runai"]}}, "required": ["type", "project"],
                 "not": {"required": ["queueName"]}},
                {"properties": {"type": {"enum": ["kueue"]}}, "required": ["type", "queueName"],
                 "not": {"required": ["project"]}},
                # type kubeflow, or unset (the operator's default): no project, no queue
                {"properties": {"type": {"enum": ["kubeflow"]}},
                 "not": {"anyOf": [{"required": ["project"]}, {"required": ["queueName"]}]}},
            ],
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.type) && self.type == 'runai' ? has(self.project) : !has(self.project)",
                    "message": "project is required with type runai and only allowed with type runai",
                },
                {
                    "rule": "has(self.type) && self.type == 'kueue' ? has(self.queueName) : !has(self.queueName)",
                    "message": "queueName is required with type kueue and only allowed with type kueue",
                },
                {
                    "rule": "!has(self.queueTimeoutSeconds) || (has(self.type) && self.type == 'kueue')",
                    "message": "queueTimeoutSeconds is only allowed with type kueue",
                },
            ],
        }
    )

    type: Optional[Literal["runai", "kubeflow", "kueue"]] = Field(
        None,
        description="runai (schedulerName runai-scheduler, label project), kubeflow (default scheduler) or kueue"
        " (the MPIJob is created suspended in the Kueue LocalQueue queueName; Kueue admits it); unset:"
        " the operator's default (chart value defaults.scheduler; built in: kubeflow). A default runai runs the"
        " experiment in the RUN:ai project of its namespace runai-<project>.",
    )
    project: Optional[str] = Field(
        None,
        description="RUN:ai project (required with type runai, only allowed with it); create the experiment in"
        " namespace runai-<project>.",
        pattern=DNS_LABEL_PATTERN,
        max_length=57,
    )
    queue_name: Optional[str] = Field(
        None,
        description="Kueue LocalQueue in the experiment's namespace (required with type kueue, only allowed with"
        " it); set as the MPIJob's label kueue.x-k8s.io/queue-name.",
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
    )
    queue_timeout_seconds: Optional[int] = Field(
        None,
        description="Type kueue only: fail the experiment (reason QueueTimeout, its MPIJob deleted) when Kueue has"
        " not admitted it this many seconds after it was queued; unset: it waits in the queue as long as it takes.",
        ge=1,
        le=30 * 24 * 3600,
    )

    @model_validator(mode="after")
    def _queue_timeout_needs_kueue(self) -> "SchedulerSpec":
        if self.type != "kueue" and self.queue_timeout_seconds is not None:
            raise PydanticCustomError(
                "unexpected_queue_timeout", "only allowed when scheduler type is kueue", {"field": "queueTimeoutSeconds"}
            )
        return self

    @model_validator(mode="after")
    def _queue_matches_type(self) -> "SchedulerSpec":
        if self.type == "kueue" and self.queue_name is None:
            raise PydanticCustomError(
                "missing_queue", "required when scheduler type is kueue", {"field": "queueName"}
            )
        if self.type != "kueue" and self.queue_name is not None:
            raise PydanticCustomError(
                "unexpected_queue", "only allowed when scheduler type is kueue", {"field": "queueName"}
            )
        return self

    @model_validator(mode="after")
    def _project_matches_type(self) -> "SchedulerSpec":
        if self.type == "runai" and self.project is None:
            raise PydanticCustomError(
                "missing_project", "required when scheduler type is runai", {"field": "project"}
            )
        if self.type != "runai" and self.project is not None:
            raise PydanticCustomError(
                "unexpected_project", "only allowed when scheduler type is runai", {"field": "project"}
            )
        return self


class SnapshotSpec(SpecModel):
    """The CSI VolumeSnapshot of the dataset volume taken when training ends."""

    enabled: bool = Field(True, description="Snapshot the dataset volume (data, model, logs) after training.")
    volume_snapshot_class_name: Optional[str] = Field(
        None,
        description="VolumeSnapshotClass of the snapshot; unset: the operator's default (chart value "
        "defaults.volumeSnapshotClassName; built in: netapp-csi-snapclass, TR-4896's Trident class).",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )
    on_failure: bool = Field(False, description="Also snapshot when training failed (to keep logs and checkpoints).")
    ready_timeout_seconds: int = Field(
        900, description="How long to wait for readyToUse before failing with SnapshotFailed.", ge=1
    )


RetentionPolicy = Literal["Retain", "Delete"]


class RetentionSpec(SpecModel):
    """What happens to the experiment's storage when the LaneExperiment is deleted."""

    dataset: RetentionPolicy = Field("Retain", description="Retain or Delete the dataset PVC created by lanex.")
    snapshots: RetentionPolicy = Field(
        "Retain", description="Retain or Delete the VolumeSnapshots (one used as a PVC dataSource is never deleted)."
    )


ServiceLevel = Literal["Standard", "Premium", "Ultra"]


class StorageSpec(SpecModel):
    """Azure NetApp Files service level of the dataset volume (changed by moving its capacity pool)."""

    service_level: Optional[ServiceLevel] = Field(
        None, description="Service level of the dataset volume: Standard, Premium or Ultra; unset keeps the pool's."
    )
    training_service_level: Optional[ServiceLevel] = Field(
        None, description="Service level used only while training runs, then moved back."
    )


# --- spec: tracking ---------------------------------------------------------------------

MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
TRACKING_URI_PATTERN = r"^https?://\S+$"
MAX_EXPERIMENT_NAME_CHARS = 256  # of an MLflow experiment name; MLflow itself takes any length


class MlflowCredentialsRef(SpecModel):
    """A Secret in the experiment's namespace whose keys reach rank 0's MLflow client as environment variables."""

    name: str = Field(
        description="Name of the Secret; its keys " + ", ".join(MLFLOW_CREDENTIAL_KEYS) + " (a token, or a user"
        " name and password) become the launcher's environment, passed on to the ranks. Like every Secret an"
        " experiment names, its owner must label it lanex.dev/usable-by-experiments: \"true\". Locally,"
        " `lanex run FILE --secret NAME=file:PATH|env:VAR` supplies it.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )


class MlflowTracking(SpecModel):
    """Log the run to an MLflow tracking server: parameters, metrics per step and epoch, results, artifacts, tags.

    Only rank 0 logs, from a background thread: a server that is down or slow never fails or slows training;
    what it could not send is kept in the run's output directory and sent when the server answers again."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _url_rules(
        optional=False, field="trackingUri", ref="credentialsSecretRef", query_hint="")})

    tracking_uri: str = Field(
        description="http:// or https:// URL of the MLflow tracking server, as reachable from the training pods"
        " (locally: from this machine). No credentials and no query string here: use credentialsSecretRef.",
        pattern=TRACKING_URI_PATTERN,
        max_length=MAX_URL_LENGTH,
    )
    experiment_name: str = Field(
        description="MLflow experiment the run is logged to (created when it does not exist). A sweep's parent run"
        " and its trials' runs all go there.",
        pattern=r"^\S(.*\S)?$",
        min_length=1,
        max_length=MAX_EXPERIMENT_NAME_CHARS,
    )
    credentials_secret_ref: Optional[MlflowCredentialsRef] = Field(
        None, description="Secret holding the server's credentials; unset: the server needs none."
    )
    log_best_checkpoint: bool = Field(
        False, description="Also upload the best checkpoint (best.pt: for vgg16_bn about 160 MiB) as an artifact."
    )

    @model_validator(mode="after")
    def _credentials_not_in_uri(self) -> "MlflowTracking":
        _no_secret_in_url(self.tracking_uri, field="trackingUri", ref="credentialsSecretRef", query_hint="")
        return self


class TrackingSpec(SpecModel):
    """Experiment trackers the run is logged to."""

    mlflow: Optional[MlflowTracking] = Field(None, description="MLflow tracking; unset: none.")


class LaneExperimentSpec(SpecModel):
    """A lane-detection training experiment: dataset volume, training job, snapshot, retention."""

    dataset: DatasetSpec = Field(
        description="The dataset volume and its source: exactly one of download, synthetic, existingClaim, fromSnapshot."
    )
    training: TrainingSpec = _section(TrainingSpec, "The distributed training job.")
    scheduler: SchedulerSpec = _section(SchedulerSpec, "Scheduler of the training pods.")
    snapshot: SnapshotSpec = _section(SnapshotSpec, "Snapshot of the dataset volume after training.")
    retention: RetentionSpec = _section(RetentionSpec, "What deletion keeps.")
    storage: StorageSpec = _section(StorageSpec, "Storage service level (Azure NetApp Files).")
    tracking: Optional[TrackingSpec] = Field(None, description="Experiment tracking (MLflow); unset: none.")


def training_config_hash(spec: LaneExperimentSpec) -> str:
    """SHA-256 of the canonical JSON of the training spec with the API's defaults (an unset image stays
    unset: the image the operator resolves is recorded next to the hash, as provenance.trainerImage)."""
    document = spec.training.model_dump(mode="json", by_alias=True)
    document.pop("terminationGracePeriodSeconds")  # how pods stop changes nothing that is trained
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- validation at the edge -------------------------------------------------------------

# Short messages for the errors users make most; anything else keeps pydantic's wording.
_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be a boolean (true or false)",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "does not match the pattern {pattern}",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} characters",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
}
_SHOW_INPUT = {"missing", "extra_forbidden", "model_type", "model_attributes_type", "dict_type"}


def field_path(loc: tuple[Any, ...], root: str = "spec") -> str:
    """`('training', 'env', 0, 'name')` -> `spec.training.env[0].name`."""
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe_errors(errors: list[dict[str, Any]], root: str = "spec") -> list[str]:
    """One `path: what is wrong` line per pydantic error."""
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        context = error.get("ctx") or {}
        if "field" in context:  # cross-field checks name the field they blame
            loc = loc + (context["field"],)
        template = _MESSAGES.get(error["type"])
        message = template.format(**context) if template else str(error["msg"])
        if error["type"] in _MESSAGES and error["type"] not in _SHOW_INPUT:
            message += f" (got {error['input']!r})"
        problems.append(f"{field_path(loc, root)}: {message}")
    return problems


def check_experiment_name(name: Any) -> str:
    """Raise InvalidSpecError unless `name` can name a LaneExperiment and all of its children."""
    if not isinstance(name, str) or not name:
        raise InvalidSpecError(f"metadata.name: required, a non-empty string (got {name!r})")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise InvalidSpecError(
            f"metadata.name: must have at most {MAX_EXPERIMENT_NAME_LENGTH} characters: it must be {EXPERIMENT_NAME_RULE}"
            f" (got {len(name)}: {name!r})"
        )
    if not matches(DNS_1035_LABEL_PATTERN, name):
        raise InvalidSpecError(f"metadata.name: must be {EXPERIMENT_NAME_RULE} (got {name!r})")
    return name


def matches(pattern: str, value: str) -> bool:
    """Whether all of `value` follows `pattern`, as the API server's (RE2) patterns and pydantic's match: a full
    match, since Python's `$` also matches before a trailing newline (`re.match('^a$', 'a\\n')` succeeds)."""
    return re.fullmatch(pattern, value) is not None


def parse_spec(spec: Any) -> LaneExperimentSpec:
    """Validate a LaneExperiment spec (a mapping from YAML, the API server or kopf) into the model.

    Raises InvalidSpecError whose message lists every problem as `spec.path: reason`.
    """
    if not isinstance(spec, Mapping):
        raise InvalidSpecError(f"spec: must be an object (got {type(spec).__name__})")
    try:
        return LaneExperimentSpec.model_validate(_plain(spec))
    except ValidationError as error:
        problems = describe_errors(error.errors(include_url=False))
        raise InvalidSpecError("; ".join(problems), problems) from None


def _plain(value: Any) -> Any:
    # kopf hands over read-only mapping views; strict validation wants plain dicts and lists.
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
