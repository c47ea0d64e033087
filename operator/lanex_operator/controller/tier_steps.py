"""When and how a LaneExperiment's dataset volume changes ANF service level around training.

Why it exists: TR-4896 raises the training volume to a faster capacity pool while the MPIJob runs
(`spec.storage`). `storage_tier.apply_tier` does the Azure side; this module is the Kubernetes side
of it, kept apart from the lifecycle (`reconciler`) because it has its own rules of recovery: the
reconciler calls `TierSteps.raise_for_training` right before it creates the MPIJob, runs
`TierSteps.restore_after_training` as the step after training, and calls `TierSteps.lower` (or
`lower_quietly`) before it fails an experiment, so the volume is never left at the training level.

Each move is written to status before it is made (a `storageMoves` entry InProgress, the
`StorageTier` condition Unknown) and its outcome right after, before the MPIJob is created or the
snapshot taken, so a restart finishes a begun move once and never repeats a finished one. A move
that fails never stops the experiment: it trains at the level the volume has, with a Warning Event
and the condition False saying why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from lanex_operator.api.models import ConditionType, InvalidSpecError, LaneExperimentSpec, parse_spec
from lanex_operator.azure.volume import ENV_PREFIX as ANF_ENV_PREFIX
from lanex_operator.azure.volume import HELM_POOLS, TierConfigError, TierSettings
from lanex_operator.controller.children import PVC, ChildKind
from lanex_operator.plan.defaults import ClusterDefaults
from lanex_operator.controller.kube import Kube, KubeError, object_path
from lanex_operator.plan.steps import ExperimentPlan, plan_for
from lanex_operator.controller.status import StatusBook, clip, utc_text
from lanex_operator.azure.storage_tier import (
    ClientFactory,
    MoveRecord,
    MoveResult,
    Reason,
    StorageTierMetrics,
    apply_tier,
    default_client_factory,
    pending_move_status,
)

C = ConditionType
ChildReader = Callable[[ChildKind, str, str], Awaitable[dict[str, Any] | None]]  # cache first, then the API
StatusFlush = Callable[[Mapping[str, Any], StatusBook], Awaitable[None]]  # writes the book's changes
log = logging.getLogger("lanex.operator")

# StorageTier reasons after which the volume is known not to have moved: nothing to move back.
NOTHING_MOVED = frozenset(reason.value for reason in (
    Reason.NOT_CONFIGURED, Reason.NOT_MAPPED, Reason.NO_CREDENTIALS, Reason.PERMISSION_DENIED, Reason.NOT_FOUND,
    Reason.REJECTED, Reason.OPERATION_FAILED))
TIER_MOVING = "Moving"  # StorageTier reason while a move is under way (written before it starts)



@dataclasses.dataclass(frozen=True)
class StorageTiering:
    """What the operator needs to change a dataset volume's ANF service level, read once at start-up."""

    settings: TierSettings | None = None  # None: no capacity pool configured (or the configuration is invalid)
    problem: str = ""  # why the configuration is invalid (names the LANEX_ANF_* variable), else empty
    metrics: StorageTierMetrics | None = None
    client_factory: ClientFactory = default_client_factory

    @classmethod
    def from_env(cls, metrics: StorageTierMetrics | None = None,
                 environ: Mapping[str, str] | None = None) -> StorageTiering:
        """`LANEX_ANF_*` (the chart's `storage.tierPools`); an invalid value disables tiering, it does not
        stop the operator: experiments that ask for a level get a condition naming the variable."""
        try:
            settings = TierSettings.from_env(environ)
        except TierConfigError as exc:
            return cls(None, f"the operator's storage-tier configuration is invalid: {exc}", metrics)
        return cls(settings if settings.configured else None, "", metrics)

    def unavailable(self, level: str) -> str | None:
        """Why no move to `level` can be tried at all, or None when the operator has pools configured."""
        if self.problem:
            return self.problem
        if self.settings is None:
            return (f"the operator has no Azure NetApp Files capacity pools configured: set the Helm value "
                    f"{HELM_POOLS}.{level} (environment variable {ANF_ENV_PREFIX}POOL_{level.upper()}) to the "
                    f"resource ID of a capacity pool of service level {level}")
        return None


class TierSteps:
    """The storage-tier steps of every experiment: up before the MPIJob exists, back once it finished."""

    def __init__(self, tiering: StorageTiering, kube: Kube, read_child: ChildReader, flush: StatusFlush,
                 now: Callable[[], datetime], defaults: ClusterDefaults) -> None:
        self.tiering = tiering
        self.kube = kube
        self.read_child = read_child
        self.flush = flush  # each move's start and outcome are written before the lifecycle goes on
        self.now = now
        self.defaults = defaults  # to plan the current spec in `lower_quietly`

    async def raise_for_training(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                                 plan: ExperimentPlan) -> None:
        """Bring the volume to `trainingServiceLevel` (else `serviceLevel`) before the MPIJob is created.

        Once per experiment: a settled StorageTier condition (True or False) means it was done; Unknown
        means a move was begun and its outcome never written (a restart), so it is finished now.
        """
        level = spec.storage.training_service_level or spec.storage.service_level
        tier = book.condition(C.STORAGE_TIER.value)
        if level is None or (tier is not None and tier.get("status") != "Unknown"):
            return
        why = "for training" if spec.storage.training_service_level else "(spec.storage.serviceLevel)"
        await self._move(body, book, plan, level, why)

    async def restore_after_training(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                                     plan: ExperimentPlan) -> float | None:
        """Step after training: once the MPIJob finished, move the volume back from the training level."""
        if book.is_settled(C.TRAINED.value):
            await self.lower(body, book, spec, plan)
        return None

    async def lower(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                    plan: ExperimentPlan) -> None:
        """Move the volume back to `serviceLevel` (else where it was before the move up), once."""
        training = spec.storage.training_service_level
        tier = book.condition(C.STORAGE_TIER.value)
        if training is None or tier is None:
            return
        up = next((move for move in book.storage_moves() if move.get("to") == training), None)
        level = spec.storage.service_level or (up or {}).get("from")
        if level is None or level == training:
            return  # nothing to go back to: the volume was at the training level already (or it is unknown)
        resumed = book.move_in_progress(level) is not None
        attempted = any(move.get("to") == level for move in book.storage_moves()) or \
            (tier.get("status") == "True" and tier.get("reason") == f"At{level}")
        nothing_moved = tier.get("status") == "False" and tier.get("reason") in NOTHING_MOVED
        if resumed or not (attempted or nothing_moved):
            await self._move(body, book, plan, level, "after training")

    async def lower_quietly(self, body: Mapping[str, Any], book: StatusBook) -> None:
        """Before failing on an API error that cannot be retried: do not leave the volume at the training level."""
        try:
            spec = parse_spec(body.get("spec"))
            meta = body["metadata"]
            await self.lower(body, book, spec, plan_for(meta["name"], meta["namespace"], spec,
                                                        defaults=self.defaults))
        except (InvalidSpecError, KubeError) as exc:
            log.warning(f"{body['metadata'].get('namespace')}/{body['metadata'].get('name')}: "
                        f"the storage tier was not moved back: {exc}")

    async def _move(self, body: Mapping[str, Any], book: StatusBook, plan: ExperimentPlan, level: str,
                    why: str) -> None:
        """One move of the dataset volume to `level`: in progress in status first, then its outcome."""
        resumed = book.move_in_progress(level)
        unavailable = self.tiering.unavailable(level)
        pvc, pv = (None, None) if unavailable else await self._dataset_volume(plan)
        if unavailable or pv is None or self.tiering.settings is None:
            refused = (self._refused(level, Reason.NOT_CONFIGURED, unavailable) if unavailable else
                       self._refused(level, Reason.NOT_MAPPED, f"the dataset PersistentVolumeClaim "
                                                               f"{plan.dataset.claim_name} has no PersistentVolume"))
            record_move(book, refused, resumed)
            await self.flush(body, book)
            return
        if resumed is None:
            book.put_move(level, pending_move_status(level, now=self.now()))
            book.set_condition(C.STORAGE_TIER.value, "Unknown", TIER_MOVING, clip(
                f"moving the dataset volume (PersistentVolume {pv['metadata']['name']}) to {level} {why}"))
        if book.changed:  # also when an earlier pass wrote the entry into the book but the write failed
            await self.flush(body, book)  # a restart during the move finds it begun and finishes it once
        try:
            record = await asyncio.to_thread(apply_tier, pv, level, self.tiering.settings,
                                             self.tiering.client_factory, pvc=pvc, metrics=self.tiering.metrics)
        except Exception as exc:  # noqa: BLE001 - apply_tier reports outcomes; a bug must not stop training
            record = self._refused(level, Reason.UNEXPECTED, f"{type(exc).__name__}: {exc}")
        record_move(book, record, resumed)
        await self.flush(body, book)  # the outcome is in status before the next child exists

    async def _dataset_volume(self, plan: ExperimentPlan) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The dataset PVC and the PV bound to it (None when missing)."""
        pvc = await self.read_child(PVC, plan.namespace, plan.dataset.claim_name)
        volume = ((pvc or {}).get("spec") or {}).get("volumeName")
        if not volume:
            return pvc, None
        return pvc, await self.kube.get_or_none(object_path("v1", "persistentvolumes", name=volume))

    def _refused(self, level: str, reason: Reason, message: str) -> MoveRecord:
        """A move that was not tried (nothing configured, nothing to map), recorded like a failed one."""
        moment = self.now()
        record = MoveRecord(from_level=None, to_level=level, start=moment, end=moment, result=MoveResult.FAILED,
                            message=clip(f"cannot change the storage tier to {level}: {message}; training goes on "
                                         f"at the volume's current level"), reason=reason)
        if self.tiering.metrics is not None:
            self.tiering.metrics.observe(record)
        return record


def record_move(book: StatusBook, record: MoveRecord, resumed: Mapping[str, Any] | None) -> None:
    """The outcome in `storageMoves`, the `StorageTier` condition and an Event.

    An Unchanged repeat of a move that a restart interrupted means that move finished: its entry
    becomes Succeeded. An Unchanged first try (already at the level) leaves no entry.
    """
    level = record.to_level
    if record.changed_anything:
        book.put_move(level, record.to_status())
    elif resumed is not None:
        book.put_move(level, {"from": resumed.get("from"), "to": level, "start": resumed.get("start"),
                              "end": utc_text(record.end), "result": MoveResult.SUCCEEDED.value})
    else:
        book.put_move(level, None)
    if record.changed_anything or resumed is not None:
        book.event(*record.event())
    condition = record.condition()
    book.set_condition(C.STORAGE_TIER.value, condition["status"], condition["reason"], clip(record.message))
