"""The cluster's defaults: what an experiment gets for the fields its spec leaves unset.

Why it exists: the platform engineer picks the trainer image, the storage class, the snapshot class
and the scheduler once per cluster (the chart's `defaults.*` values, passed to the operator as
environment variables), not once per experiment. For those choices to take effect, the CRD declares
no default for these fields (an API-server default would always win) and the operator resolves them
here, in one place, when it builds an experiment's plan (`plan.plan_for`). Local runs and the CLI
use the built-in fallbacks, which are TR-4896's setup.

    defaults = ClusterDefaults.from_env()          # LANEX_TRAINER_IMAGE, LANEX_DEFAULT_*
    effective = defaults.resolve("runai-lanes", spec)
    effective.trainer_image, effective.defaulted   # value, and which spec fields it filled in
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Literal, Optional, cast

from lanex_operator.api.models import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, InvalidSpecError, LaneExperimentSpec

Scheduler = Literal["kubeflow", "runai", "kueue"]
# The schedulers a cluster default may name (kueue needs a queue per experiment: spec.scheduler.queueName).
SCHEDULERS: tuple[Scheduler, ...] = ("kubeflow", "runai")
RUNAI_NAMESPACE_PREFIX = "runai-"

# The spec field each default fills, and the environment variable (chart value) it comes from.
TRAINER_IMAGE_FIELD = "spec.training.image"
STORAGE_CLASS_FIELD = "spec.dataset.storageClassName"
SNAPSHOT_CLASS_FIELD = "spec.snapshot.volumeSnapshotClassName"
SCHEDULER_FIELD = "spec.scheduler.type"
VARIABLES = {
    TRAINER_IMAGE_FIELD: "LANEX_TRAINER_IMAGE",
    STORAGE_CLASS_FIELD: "LANEX_DEFAULT_STORAGE_CLASS",
    SNAPSHOT_CLASS_FIELD: "LANEX_DEFAULT_SNAPSHOT_CLASS",
    SCHEDULER_FIELD: "LANEX_DEFAULT_SCHEDULER",
}


@dataclasses.dataclass(frozen=True)
class Effective:
    """The values an experiment runs with, and the spec fields that the cluster's defaults filled in."""

    trainer_image: str
    storage_class_name: str
    volume_snapshot_class_name: str
    scheduler: Scheduler
    runai_project: Optional[str]  # set exactly when scheduler is runai
    defaulted: tuple[str, ...]  # spec field paths, e.g. "spec.training.image"
    kueue_queue: Optional[str] = None  # set exactly when scheduler is kueue


@dataclasses.dataclass(frozen=True)
class ClusterDefaults:
    """Per-cluster defaults; the field defaults are the built-in fallbacks (TR-4896's setup)."""

    # Trainer image (Dockerfile.trainer) of experiments that name none (spec.training.image).
    trainer_image: str = "ghcr.io/lanex/trainer:0.1.0"
    # StorageClass of dataset volumes (spec.dataset.storageClassName): Trident on Azure NetApp Files.
    storage_class_name: str = "azurenetappfiles"
    # VolumeSnapshotClass of result snapshots (spec.snapshot.volumeSnapshotClassName): Trident's CSI driver.
    volume_snapshot_class_name: str = "netapp-csi-snapclass"
    # Scheduler of training pods (spec.scheduler.type). With runai, an experiment that names no
    # scheduler runs in the RUN:ai project of its namespace `runai-<project>`.
    scheduler: Scheduler = "kubeflow"

    def __post_init__(self) -> None:
        _check(VARIABLES[TRAINER_IMAGE_FIELD], self.trainer_image, r"^\S+$", "an image reference without spaces")
        for field, value in ((STORAGE_CLASS_FIELD, self.storage_class_name),
                             (SNAPSHOT_CLASS_FIELD, self.volume_snapshot_class_name)):
            _check(VARIABLES[field], value, DNS_SUBDOMAIN_PATTERN, "a DNS subdomain name", max_length=253)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"{VARIABLES[SCHEDULER_FIELD]}={self.scheduler!r}: must be one of "
                             f"{', '.join(SCHEDULERS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClusterDefaults:
        """Read the variables the chart sets; an unset or empty one keeps the built-in fallback.
        A wrong value raises ValueError naming the variable (the operator fails at start-up)."""
        environ = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for attribute, field in (("trainer_image", TRAINER_IMAGE_FIELD), ("storage_class_name", STORAGE_CLASS_FIELD),
                                 ("volume_snapshot_class_name", SNAPSHOT_CLASS_FIELD), ("scheduler", SCHEDULER_FIELD)):
            raw = environ.get(VARIABLES[field], "").strip()
            if raw:
                values[attribute] = raw
        return cls(**values)  # type: ignore[arg-type]

    def resolve(self, namespace: str, spec: LaneExperimentSpec) -> Effective:
        """The effective values of experiment `namespace/...`: the spec's own, else these defaults.

        Raises InvalidSpecError when the default scheduler is runai and the namespace names no
        RUN:ai project (it is not `runai-<project>`): the spec must then choose a scheduler.
        """
        defaulted: list[str] = []

        def pick(value: Optional[str], default: str, field: str) -> str:
            if value is not None:
                return value
            defaulted.append(field)
            return default

        image = pick(spec.training.image, self.trainer_image, TRAINER_IMAGE_FIELD)
        storage_class = pick(spec.dataset.storage_class_name, self.storage_class_name, STORAGE_CLASS_FIELD)
        snapshot_class = pick(spec.snapshot.volume_snapshot_class_name, self.volume_snapshot_class_name,
                              SNAPSHOT_CLASS_FIELD)
        scheduler = cast(Scheduler, pick(spec.scheduler.type, self.scheduler, SCHEDULER_FIELD))
        project = spec.scheduler.project
        if spec.scheduler.type is None and scheduler == "runai":
            project = runai_project_of(namespace)
        return Effective(trainer_image=image, storage_class_name=storage_class,
                         volume_snapshot_class_name=snapshot_class, scheduler=scheduler,
                         runai_project=project, defaulted=tuple(defaulted),
                         kueue_queue=spec.scheduler.queue_name if scheduler == "kueue" else None)


def runai_project_of(namespace: str) -> str:
    """The RUN:ai project whose namespace is `namespace` (`runai-<project>`); InvalidSpecError otherwise."""
    project = namespace[len(RUNAI_NAMESPACE_PREFIX):] if namespace.startswith(RUNAI_NAMESPACE_PREFIX) else ""
    if not re.fullmatch(DNS_LABEL_PATTERN, project):
        raise InvalidSpecError(
            f"{SCHEDULER_FIELD}: unset, and the operator's default scheduler ({VARIABLES[SCHEDULER_FIELD]}) is runai, "
            f"which needs a RUN:ai project: create the experiment in its project's namespace runai-<project> "
            f"(not {namespace!r}), or set spec.scheduler (type runai with a project, or type kubeflow)")
    return project


def field_origin(field: str, defaulted: tuple[str, ...]) -> str:
    """How to name where a value came from in a message: the spec field, or the operator's default."""
    if field in defaulted:
        return f"{field} unset: the operator's default {VARIABLES[field]}"
    return field


def _check(variable: str, value: str, pattern: str, what: str, max_length: int | None = None) -> None:
    if not re.fullmatch(pattern, value) or (max_length is not None and len(value) > max_length):
        raise ValueError(f"{variable}={value!r}: must be {what}")
