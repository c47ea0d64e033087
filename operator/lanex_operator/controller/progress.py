"""Live training progress: the launcher's newest `LANEX_PROGRESS` line -> `status.progress`, metrics, stalls.

Why it exists: a run trains for hours and `Training` alone says nothing (epoch? loss? ETA? hung?).
The trainer's rank 0 prints its progress as one log line (PROGRESS_CONTRACT); the operator reads
the tail of the launcher's log through `pods/log` (`tailLines`, `limitBytes`: a bounded read, no
follow, no volume mount) and writes what it found to `status.progress` with `observedAt`.

It runs beside the lifecycle, never inside it: `ProgressFollower.follow` is the body of its own
kopf daemon per training experiment (handlers.py), with its own API client and a request budget
(`RequestBudget`, a token bucket shared by all experiments): each experiment is read at most every
`progress_interval_seconds`, and all progress requests together never exceed
`progress_requests_per_second` (under load every experiment is simply read less often). A read
that fails is skipped, never retried in a loop, and never delays a lifecycle step.

Stall detection (`judge_stall`) is pure: the reconciler calls it in the training step, because it
owns the conditions list (a second writer of `status.conditions` would overwrite the other's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Optional

from kopf import DaemonStoppingReason
from pydantic import ValidationError

from lanex_operator.api.models import API_VERSION, PLURAL, ConditionType, TrainingProgress
from lanex_operator.controller.children import Wakers
from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.kube import Kube, KubeError, object_path
from lanex_operator.controller.metrics import OperatorMetrics
from lanex_operator.controller.status import parse_utc, utc_text
from lanex_trainer.progress import parse_progress_line  # torch-free: the operator image ships lanex_trainer

# The tail read: enough lines to find the newest progress line among other ranks' output, and a byte
# cap so that one read stays small. The kubelet cuts at limitBytes from the *start* of the tail, so a
# cut read lost the newest lines: it is read again with fewer lines (long lines, e.g. a progress bar
# redrawn with carriage returns, or a long validation history).
TAIL_LINES = (200, 20, 2)
LIMIT_BYTES = 256 * 1024
# status.progress keeps the newest validations only, so that status stays far below etcd's object limit.
HISTORY_KEPT = 500
LAUNCHER_SELECTOR = "training.kubeflow.org/job-name={name},training.kubeflow.org/job-role=launcher"
log = logging.getLogger("lanex.operator.progress")


def newest_progress(text: str) -> Optional[TrainingProgress]:
    """The newest valid progress record in a log text (a cut or garbled line is passed over)."""
    for line in reversed(text.splitlines()):
        data = parse_progress_line(line)  # the trainer's own reader of its line format
        if data is None:
            continue
        try:
            return TrainingProgress.model_validate(data)
        except ValidationError:
            continue
    return None


def progress_status(progress: TrainingProgress, observed: datetime, ended: bool = False) -> dict[str, Any]:
    """The status keys the progress writer owns: `progress` (every key, nulls kept), the two columns
    (once training `ended` without a finished record, the ETA column says `-`, not a stale estimate), and
    `mlflow`, the run's MLflow link once the trainer reports one."""
    record = progress.model_copy(update={"observed_at": observed,
                                         "validation_history": progress.validation_history[-HISTORY_KEPT:]})
    found = {"progress": record.model_dump(by_alias=True, mode="json"), "progressSummary": record.summary(),
             "eta": record.eta() if record.state == "finished" or not ended else "-"}
    if record.mlflow is not None:  # where `lanex get` and the UI find the run, as for a sweep's parent run
        found["mlflow"] = record.mlflow.model_dump(by_alias=True, mode="json", exclude_none=True)
    return found


class RequestBudget:
    """A token bucket: at most `rate` requests per second on average, bursts of at most `rate` (>= 1).

    Waiters are served in arrival order (an asyncio.Lock is fair), so no experiment starves.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0 - 1e-9:  # (a float refill may fall short of 1 by a rounding error)
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


@dataclasses.dataclass
class _Followed:
    """What the follower remembers about one experiment between reads (lost on restart: harmless)."""

    launcher: Optional[str] = None  # pod name, until it is gone or stops advancing
    written: Optional[tuple[Any, ...]] = None  # advance key of the progress last written


class ProgressFollower:
    """Reads the launcher's progress of training experiments and writes `status.progress`."""

    def __init__(self, kube: Kube, config: OperatorConfig, metrics: OperatorMetrics, wakers: Wakers,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.wakers = wakers
        self.now = now
        self.budget = RequestBudget(config.progress_requests_per_second)
        self._followed: dict[str, _Followed] = {}  # by experiment uid

    async def follow(self, body: Mapping[str, Any], stopped: Any) -> None:
        """The daemon's body: read, then wait the interval, until kopf stops it (training ended)."""
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            while not stopped:
                try:
                    await self.poll(body)
                except KubeError as exc:  # skipped: the next read comes after the interval, as always
                    self.metrics.reconcile_errors.labels(kind="progress").inc()
                    log.debug(f"{namespace}/{name}: progress not read: {exc}")
                await stopped.wait(self.config.progress_interval_seconds)
            if _training_ended(stopped):
                await self.poll(body, final=True)  # the launcher's last word (state finished), once
        except KubeError as exc:
            log.debug(f"{namespace}/{name}: final progress not read: {exc}")
        finally:
            self._followed.pop(uid, None)
            self.metrics.training.forget(namespace, name)

    def forget(self, namespace: str, name: str, uid: str) -> None:
        """The experiment is gone: drop its series (the daemon's own exit does the same)."""
        self._followed.pop(uid, None)
        self.metrics.training.forget(namespace, name)

    async def poll(self, body: Mapping[str, Any], final: bool = False) -> Optional[TrainingProgress]:
        """One read of the launcher's log tail; writes status when the progress advanced (or, `final`,
        once training ended: the last record, so that status does not keep a running ETA)."""
        meta, status = body["metadata"], dict(body.get("status") or {})
        namespace, name = meta["namespace"], meta["name"]
        mpijob = (status.get("children") or {}).get("mpiJob")
        trained = next((c for c in status.get("conditions") or [] if c.get("type") == ConditionType.TRAINED.value), {})
        if not mpijob or (trained.get("reason") != "Running" and not final):
            return None  # no launcher runs yet (or any more): nothing to read
        followed = self._followed.setdefault(meta["uid"], _Followed())
        progress = await self._read(namespace, mpijob, followed)
        if progress is None:
            return None
        self.metrics.training.observe(namespace, name, progress)
        key = progress.advance_key()
        previous = status.get("progress")
        if followed.written is None and isinstance(previous, Mapping):
            try:
                followed.written = TrainingProgress.model_validate(previous).advance_key()
            except ValidationError:
                followed.written = None
        if key == followed.written and not final:
            followed.launcher = None  # not advancing: look for a newer launcher pod next time
            return progress
        observed = self.now()
        if key == followed.written and isinstance(previous, Mapping):
            observed = parse_utc(str(previous.get("observedAt") or "")) or observed  # nothing new was seen
        await self.budget.acquire()
        # A JSON patch: a merge patch would delete the keys whose value is null (the contract keeps them).
        await self.kube.json_patch(object_path(API_VERSION, PLURAL, namespace, name, "status"), [
            {"op": "add", "path": f"/status/{key}", "value": value}
            for key, value in progress_status(progress, observed, ended=final).items()])
        followed.written = key
        stalled = next((c for c in status.get("conditions") or [] if c.get("type") == ConditionType.STALLED.value), {})
        if stalled.get("status") == "True":
            self.wakers.poke(namespace, name)  # the reconciler clears Stalled now, not at its next resync
        return progress

    async def _read(self, namespace: str, mpijob: str, followed: _Followed) -> Optional[TrainingProgress]:
        if followed.launcher is None:
            await self.budget.acquire()
            pods = await self.kube.list(object_path("v1", "pods", namespace),
                                        label_selector=LAUNCHER_SELECTOR.format(name=mpijob))
            live = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
            if not live:
                return None
            newest = max(live, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
            followed.launcher = newest["metadata"]["name"]
        found = None
        for lines in TAIL_LINES:
            await self.budget.acquire()
            try:
                text = await self.kube.text(object_path("v1", "pods", namespace, followed.launcher, "log"),
                                            params={"tailLines": str(lines), "limitBytes": str(LIMIT_BYTES)})
            except KubeError as exc:
                if exc.not_found:
                    followed.launcher = None  # replaced (a restart): find the new one next time
                    return None
                raise
            found = newest_progress(text) or found
            if len(text.encode()) < LIMIT_BYTES:
                break  # nothing was cut: the newest lines are in
        return found


def _training_ended(stopped: Any) -> bool:
    """kopf stopped the daemon because the phase left Training (not because the operator exits)."""
    reason = getattr(stopped, "reason", None)
    return reason is not None and bool(reason & DaemonStoppingReason.FILTERS_MISMATCH)


# --- stall detection (pure; the reconciler applies the verdict) ----------------------------------


@dataclasses.dataclass(frozen=True)
class StallVerdict:
    stalled: bool
    since: datetime  # when the last progress was seen (or training started, or the launcher restarted)
    seconds_left: float  # until it counts as stalled (0 when it does)
    last: Optional[TrainingProgress]

    def describe(self, timeout: int) -> str:
        """`no training progress for 1800s (last: epoch 3/30, step 1200/9000, seen at ...)`."""
        if self.last is None:
            what = "no progress line yet"
        else:
            what = f"epoch {self.last.epoch}/{self.last.epochs}, step {self.last.step}/{self.last.steps}"
        return f"no training progress for {timeout}s (last: {what}, seen at {utc_text(self.since)})"


def judge_stall(progress: Optional[Mapping[str, Any]], running_since: Optional[str],
                stalled: Optional[Mapping[str, Any]], now: datetime, timeout: int) -> StallVerdict:
    """Stalled when nothing advanced for `timeout` seconds, counting from the newest of: the progress'
    `observedAt`, when the MPIJob started running, and when the Stalled condition last went False
    (a launcher restart gives the new launcher a whole timeout)."""
    last = None
    if isinstance(progress, Mapping):
        try:
            last = TrainingProgress.model_validate(progress)
        except ValidationError:
            last = None
    moments = [parse_utc(running_since)]
    if last is not None and last.observed_at is not None:
        moments.append(last.observed_at)
    if stalled is not None and stalled.get("status") == "False":
        moments.append(parse_utc(stalled.get("lastTransitionTime")))
    known = [m for m in moments if m is not None]
    since = max(known) if known else now
    left = timeout - (now - since).total_seconds()
    return StallVerdict(stalled=left <= 0, since=since, seconds_left=max(0.0, left), last=last)
