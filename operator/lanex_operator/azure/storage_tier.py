"""Move an experiment's dataset volume between ANF service levels, and never block training on it.

Why it exists: TR-4896 raises an Azure NetApp Files volume from Standard to Premium (4x the
throughput per TiB) by moving it to a capacity pool of that level: no data copy, no loss of
access. lanex makes that a property of the experiment (`spec.storage.serviceLevel`, and
`spec.storage.trainingServiceLevel` used only while the MPIJob runs). This module is the whole
mechanism: it finds the volume's current pool, calls azure-mgmt-netapp's `volumes.begin_pool_change`
and waits for the long-running operation within a budget, retries what is retryable, and turns
every outcome into a `MoveRecord` (never an exception), so a failed move leaves the experiment
training at its current level with a clear reason.

How the operator uses it (handlers own the Kubernetes side; this module never touches the cluster):

    settings = TierSettings.from_env()                 # once at start-up; LANEX_ANF_* from Helm values
    metrics = StorageTierMetrics(operator_registry)    # once; lanex_storage_pool_changes_total, ...
    record = apply_tier(pv, level, settings, default_client_factory, pvc=pvc, metrics=metrics)
    # blocking (up to settings.move_timeout_seconds): from an async handler use asyncio.to_thread

- right before creating the MPIJob: `level = spec.storage.trainingServiceLevel or spec.storage.serviceLevel`
  (skip when both are unset); after the MPIJob finished, succeeded or failed, and only when a
  training level was set: `level = spec.storage.serviceLevel or <the "from" of that move up>`;
- optionally patch `pending_move_status(level)` into `status.storageMoves` first (result InProgress)
  and replace it with the outcome;
- append `record.to_status()` to `status.storageMoves` when `record.changed_anything` (a repeat
  after an operator restart comes back `Unchanged` and adds nothing);
- emit `record.event()` (type, reason, message) for every record but `Unchanged`;
- set `record.condition()` as the `StorageTier` condition: True when at the wanted level, False
  (with the reason and message) when the move failed or timed out. Training proceeds either way,
  at the level the volume has; `record.retryable` says whether trying again later can help.

Credentials come from azure-identity's `DefaultAzureCredential` (workload identity, or the
environment of a Secret mounted into the operator), never from the experiment's spec.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.core.polling.arm_polling import ARMPolling
from prometheus_client import CollectorRegistry, Counter, Histogram
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity import wait_exponential

from lanex_operator.azure.volume import (
    SERVICE_LEVELS,
    AccountScope,
    TierConfigError,
    TierSettings,
    VolumeMappingError,
    VolumeRef,
    volume_ref,
    volume_resource_id,
)

LOGGER = logging.getLogger(__name__)
CONDITION_TYPE = "StorageTier"
MOVE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


class MoveResult(str, Enum):
    """Outcome of one requested level change."""

    SUCCEEDED = "Succeeded"
    UNCHANGED = "Unchanged"  # the volume already was at the level: nothing was called
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"  # the operation may still finish on Azure's side


class Reason(str, Enum):
    """Why a move failed, as a CamelCase condition/event reason."""

    NOT_CONFIGURED = "PoolNotConfigured"
    NOT_MAPPED = "VolumeNotMapped"
    NO_CREDENTIALS = "AuthenticationFailed"
    PERMISSION_DENIED = "PermissionDenied"
    NOT_FOUND = "NotFound"
    CONFLICT = "ConflictingOperation"
    THROTTLED = "Throttled"
    SERVER_ERROR = "ServerError"
    CONNECTION = "ConnectionError"
    REJECTED = "Rejected"
    OPERATION_FAILED = "PoolChangeFailed"
    TIMED_OUT = "TimedOut"
    UNEXPECTED = "UnexpectedError"


@dataclasses.dataclass(frozen=True)
class MoveRecord:
    """One requested level change: what was asked, what happened, and whether retrying can help."""

    from_level: Optional[str]
    to_level: str
    start: datetime
    end: datetime
    result: MoveResult
    message: str
    retryable: bool = False
    reason: Optional[Reason] = None
    attempts: int = 0
    volume_id: Optional[str] = None  # the volume's ARM ID after the move (or where it was found)

    @property
    def succeeded(self) -> bool:
        """The volume is at the requested level (moved now or already there)."""
        return self.result in (MoveResult.SUCCEEDED, MoveResult.UNCHANGED)

    @property
    def changed_anything(self) -> bool:
        """Whether the move is worth a `status.storageMoves` entry (an Azure call was made or failed)."""
        return self.result is not MoveResult.UNCHANGED

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())

    def to_status(self) -> dict[str, Any]:
        """The `status.storageMoves[]` entry (api.status.StorageMove, camelCase, RFC 3339 times)."""
        result = self.result.value
        if self.reason is not None and self.reason.value != result:
            result = f"{result}: {self.reason.value}"
        return {"from": self.from_level, "to": self.to_level, "start": _rfc3339(self.start),
                "end": _rfc3339(self.end), "result": result}

    def event(self) -> tuple[str, str, str]:
        """(type, reason, message) of the Kubernetes Event for this move."""
        if self.succeeded:
            return "Normal", "StorageTierChanged", self.message
        return "Warning", "StorageTierFailed", self.message

    def condition(self, now: datetime | None = None) -> dict[str, Any]:
        """The `StorageTier` condition (camelCase dict like api.status.Condition)."""
        return {"type": CONDITION_TYPE, "status": "True" if self.succeeded else "False",
                "reason": f"At{self.to_level}" if self.succeeded else (self.reason or Reason.UNEXPECTED).value,
                "message": self.message, "lastTransitionTime": _rfc3339(now or self.end)}


def pending_move_status(to_level: str, from_level: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """A `status.storageMoves[]` entry for a move that is starting (result InProgress)."""
    return {"from": from_level, "to": to_level, "start": _rfc3339(now or _now()), "end": None, "result": "InProgress"}


def _canonical_level(value: object) -> Optional[str]:
    """ARM's service level with our spelling (Standard, Premium, Ultra); other ANF levels as given."""
    if not value:
        return None
    text = str(getattr(value, "value", value))
    return next((level for level in SERVICE_LEVELS if level.lower() == text.lower()), text)


def _folded(scope: AccountScope) -> tuple[str, ...]:
    """An account scope compared the way ARM compares IDs: case-insensitively."""
    return tuple(part.lower() for part in dataclasses.astuple(scope))


def _rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class StorageTierMetrics:
    """Prometheus metrics of pool changes, registered in the operator's registry (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.pool_changes = Counter("lanex_storage_pool_changes", "ANF service-level changes, by result.",
                                    ["result"], registry=self.registry)
        self.pool_change_seconds = Histogram("lanex_storage_pool_change_seconds",
                                             "Duration of ANF service-level changes (retries included), by result.",
                                             ["result"], buckets=MOVE_BUCKETS, registry=self.registry)

    def observe(self, record: MoveRecord) -> None:
        self.pool_changes.labels(result=record.result.value).inc()
        if record.result is not MoveResult.UNCHANGED:
            self.pool_change_seconds.labels(result=record.result.value).observe(record.seconds)


# --- failures -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    """A classified error: reason, whether retrying can help, and a message naming the cause."""

    reason: Reason
    retryable: bool
    message: str


class MoveError(Exception):
    """An attempt failed; carries its classification (tenacity retries it when `failure.retryable`)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class _PollingAbandoned(Exception):
    """Raised inside the poller's thread once the move's budget is spent, so the thread ends."""


class _AbandonablePolling(ARMPolling):
    """ARM polling (Azure-AsyncOperation / Location) that stops polling once abandoned.

    `LROPoller.wait(timeout)` returns at the timeout but its thread would poll on forever; this
    makes the thread end at its next poll instead.
    """

    def __init__(self, interval_s: float) -> None:
        super().__init__(timeout=interval_s)
        self._abandoned = threading.Event()

    def abandon(self) -> None:
        self._abandoned.set()

    def update_status(self) -> None:
        if self._abandoned.is_set():
            raise _PollingAbandoned("the pool change's time budget is spent")
        super().update_status()


def _arm_error(exc: HttpResponseError) -> tuple[str, str]:
    """(code, message) of an ARM error, from the parsed error or the response body."""
    error = getattr(exc, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if not (code and message) and exc.response is not None:
        try:
            body = json.loads(exc.response.text() or "{}")
        except (ValueError, TypeError):
            body = {}
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            code, message = code or detail.get("code"), message or detail.get("message")
    return str(code or "Unknown"), _first_line(message or exc.message or exc)


def classify(exc: BaseException, *, during: str) -> Failure:
    """Classify an error raised `during` an ARM call (e.g. "pool change of volume v1").

    403 permission, 404 not found, 401/credentials: permanent. 409 conflicting operation, 429,
    5xx and connection errors: retryable. A failed long-running operation: permanent.
    """
    if isinstance(exc, MoveError):
        return exc.failure
    if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
        return Failure(Reason.NO_CREDENTIALS, False, f"{during}: no Azure credentials: {_first_line(exc.message)} "
                       "(configure workload identity, or AZURE_* variables from a Secret, for the operator)")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return Failure(Reason.CONNECTION, True,
                       f"{during}: cannot reach Azure Resource Manager: {_first_line(exc.message)}")
    if isinstance(exc, HttpResponseError):
        code, message = _arm_error(exc)
        status = exc.status_code
        if status == 401:
            return Failure(Reason.NO_CREDENTIALS, False, f"{during}: 401 {code}: {message}")
        if status == 403:
            return Failure(Reason.PERMISSION_DENIED, False,
                           f"{during}: 403 {code}: {message} (the operator's identity needs "
                           "Microsoft.NetApp/netAppAccounts/capacityPools/volumes/poolChange/action and read access)")
        if status == 404:
            return Failure(Reason.NOT_FOUND, False, f"{during}: 404 {code}: {message}")
        if status == 409:
            return Failure(Reason.CONFLICT, True, f"{during}: 409 {code} (another operation is in progress): {message}")
        if status == 429:
            return Failure(Reason.THROTTLED, True, f"{during}: 429 {code}: {message}")
        if status is not None and status >= 500:
            return Failure(Reason.SERVER_ERROR, True, f"{during}: {status} {code}: {message}")
        return Failure(Reason.REJECTED, False, f"{during}: {status} {code}: {message}")
    return Failure(Reason.UNEXPECTED, False, f"{during}: {type(exc).__name__}: {_first_line(str(exc))}")


def _first_line(text: object, limit: int = 300) -> str:
    """The first line of a (possibly multi-line, SDK-written) message, bounded for conditions and events."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- the mover ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocatedVolume:
    """Where a volume sits now."""

    pool: str
    level: Optional[str]
    volume_id: str


class PoolMover:
    """Service-level reads and moves of ANF volumes through a `NetAppManagementClient`."""

    def __init__(self, client: Any, settings: TierSettings, *, metrics: StorageTierMetrics | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self._sleep = sleep

    def locate(self, ref: VolumeRef) -> LocatedVolume:
        """Find the pool holding the volume: the hint, then the configured pools, then the account's others."""
        tried: list[str] = []
        for pool in self._candidate_pools(ref):
            if pool.lower() in (t.lower() for t in tried):
                continue
            tried.append(pool)
            try:
                volume = self.client.volumes.get(ref.scope.resource_group, ref.scope.account, pool, ref.volume)
            except ResourceNotFoundError:
                continue
            level = getattr(volume, "service_level", None)  # flattened `properties.serviceLevel`
            return LocatedVolume(pool=pool, level=_canonical_level(level) or self.settings.level_of_pool(pool),
                                 volume_id=volume.id or volume_resource_id(ref, pool))
        scope = ref.scope
        raise MoveError(Failure(Reason.NOT_FOUND, False,
                                f"ANF volume {ref.volume} (from {ref.source or 'the mapping'}) was not found in "
                                f"any pool of account {scope.subscription_id}/{scope.resource_group}/{scope.account} "
                                f"(tried {', '.join(tried) or 'none'})"))

    def _candidate_pools(self, ref: VolumeRef) -> Iterable[str]:
        if ref.pool_hint:
            yield ref.pool_hint
        for level in self.settings.pools:
            yield self.settings.pool_name(level)
        for pool in self.client.pools.list(ref.scope.resource_group, ref.scope.account):
            yield str(pool.name).rsplit("/", 1)[-1]  # ARM names child pools "account/pool"

    def current_level(self, ref: VolumeRef) -> Optional[str]:
        """The volume's service level now (`properties.serviceLevel`)."""
        return self.locate(ref).level

    def move(self, ref: VolumeRef, target_level: str, timeout_s: float | None = None) -> MoveRecord:
        """Move the volume to the pool configured for `target_level`; never raises.

        No-op (`Unchanged`) when already at the level. Retryable errors are retried with exponential
        backoff, bounded by `settings.retry_attempts` and the time budget `timeout_s`
        (default `settings.move_timeout_seconds`), which also bounds waiting for the operation.
        """
        start, clock_start = _now(), time.monotonic()
        budget = self.settings.move_timeout_seconds if timeout_s is None else timeout_s
        deadline = clock_start + budget
        progress = _Progress()

        def finish(result: MoveResult, message: str, failure: Failure | None = None) -> MoveRecord:
            record = MoveRecord(from_level=progress.from_level, to_level=target_level, start=start, end=_now(),
                                result=result, message=message, retryable=bool(failure and failure.retryable),
                                reason=failure.reason if failure else None, attempts=progress.attempts,
                                volume_id=progress.volume_id)
            if self.metrics is not None:
                self.metrics.observe(record)
            log = LOGGER.info if failure is None else LOGGER.warning
            log("storage tier: %s", message)
            return record

        try:
            target_pool = self.settings.pool_name(target_level)
            self._check_scope(ref)
        except TierConfigError as exc:
            return finish(MoveResult.FAILED, f"cannot move ANF volume {ref.volume} to {target_level}: {exc}",
                          Failure(Reason.NOT_CONFIGURED, False, str(exc)))

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.retry_attempts) | stop_before_delay(budget),
            wait=wait_exponential(multiplier=self.settings.retry_delay_seconds,
                                  min=self.settings.retry_delay_seconds, max=self.settings.retry_max_delay_seconds),
            retry=retry_if_exception(lambda exc: isinstance(exc, MoveError) and exc.failure.retryable
                                     and exc.failure.reason is not Reason.TIMED_OUT),
            before_sleep=_log_retry, sleep=self._sleep, reraise=True)
        try:
            moved = retrying(self._attempt, ref, target_level, target_pool, deadline, budget, progress)
        except MoveError as exc:
            failure = exc.failure
            if failure.retryable and progress.attempts > 1:
                failure = dataclasses.replace(failure, message=f"{failure.message} (gave up after "
                                              f"{progress.attempts} attempts)")
            result = MoveResult.TIMED_OUT if failure.reason is Reason.TIMED_OUT else MoveResult.FAILED
            at = progress.from_level or "its current level"
            return finish(result, f"could not move ANF volume {ref.volume} from {at} to {target_level}: "
                          f"{failure.message}; the volume stays at {at}", failure)
        if not moved:
            return finish(MoveResult.UNCHANGED, f"ANF volume {ref.volume} already is at {target_level}")
        return finish(MoveResult.SUCCEEDED, f"moved ANF volume {ref.volume} from {progress.from_level} to "
                      f"{target_level} (pool {target_pool}) in {time.monotonic() - clock_start:.1f} s")

    def _check_scope(self, ref: VolumeRef) -> None:
        try:
            configured = self.settings.scope()
        except TierConfigError:
            return  # bare pool names without an account: the volume's own account is used
        if _folded(configured) != _folded(ref.scope):
            raise TierConfigError(
                f"ANF volume {ref.volume} (from {ref.source}) is in account {ref.scope.subscription_id}/"
                f"{ref.scope.resource_group}/{ref.scope.account} but the configured pools are in "
                f"{configured.subscription_id}/{configured.resource_group}/{configured.account}")

    def _locate(self, ref: VolumeRef) -> LocatedVolume:
        try:
            return self.locate(ref)
        except MoveError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a classified MoveError
            raise MoveError(classify(exc, during=f"reading ANF volume {ref.volume}")) from exc

    def _attempt(self, ref: VolumeRef, target_level: str, target_pool: str, deadline: float, budget: float,
                 progress: _Progress) -> bool:
        """One try: locate, start the pool change, wait. Returns whether a change happened."""
        progress.attempts += 1
        located = self._locate(ref)
        progress.volume_id = located.volume_id
        if progress.from_level is None:
            progress.from_level = located.level
        if located.level == target_level or (located.level is None and located.pool.lower() == target_pool.lower()):
            return progress.change_started  # a retry may find an earlier attempt's change done
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MoveError(Failure(Reason.TIMED_OUT, True, "the time budget was spent before the pool change began"))
        from azure.mgmt.netapp.models import PoolChangeRequest  # heavy import, only when moving

        target_id = ref.scope.pool_id(target_pool)
        during = f"pool change of ANF volume {ref.volume} to pool {target_id}"
        polling = _AbandonablePolling(self.settings.poll_interval_seconds)
        try:
            poller = self.client.volumes.begin_pool_change(
                ref.scope.resource_group, ref.scope.account, located.pool, ref.volume,
                body=PoolChangeRequest(new_pool_resource_id=target_id), polling=polling)
        except Exception as exc:  # noqa: BLE001
            raise MoveError(classify(exc, during=during)) from exc
        progress.change_started = True
        try:
            poller.wait(timeout=max(0.0, deadline - time.monotonic()))
        except HttpResponseError as exc:
            if exc.status_code is not None and exc.status_code < 300:  # the operation itself reported Failed
                code, message = _arm_error(exc)
                raise MoveError(Failure(Reason.OPERATION_FAILED, False,
                                        f"{during}: the operation ended {poller.status()}: {code}: {message}")) from exc
            raise MoveError(classify(exc, during=f"{during} (polling)")) from exc
        except Exception as exc:  # noqa: BLE001
            raise MoveError(classify(exc, during=f"{during} (polling)")) from exc
        if not poller.done():
            polling.abandon()
            raise MoveError(Failure(Reason.TIMED_OUT, True,
                                    f"{during}: not finished within the move's budget of {budget:g} s "
                                    f"(last status {poller.status()}); it may still complete"))
        after = self._locate(dataclasses.replace(ref, pool_hint=target_pool))
        progress.volume_id = after.volume_id
        if after.level != target_level:
            raise MoveError(Failure(Reason.OPERATION_FAILED, False,
                                    f"{during}: reported success but the volume is at {after.level} "
                                    f"in pool {after.pool}"))
        return True


@dataclasses.dataclass
class _Progress:
    """What earlier attempts of one move learnt (the level before, whether a change began)."""

    attempts: int = 0
    from_level: Optional[str] = None
    volume_id: Optional[str] = None
    change_started: bool = False


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    LOGGER.warning("storage tier: attempt %d failed (%s); retrying in %.1f s", state.attempt_number, exc, delay)


# --- the entry point for handlers -----------------------------------------------------------------


ClientFactory = Callable[[TierSettings, str], Any]


def default_client_factory(settings: TierSettings, subscription_id: str) -> Any:
    """A `NetAppManagementClient` with `DefaultAzureCredential` (workload identity, AZURE_* env, managed identity).

    Developer-tool credentials (Azure CLI, PowerShell, azd, VS Code, shared cache) are excluded: an
    operator pod has none. azure-core's own retries are off: `PoolMover` retries whole attempts
    (re-reading the volume first), so one bounded policy decides.
    """
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.netapp import NetAppManagementClient

    credential = DefaultAzureCredential(exclude_cli_credential=True, exclude_powershell_credential=True,
                                        exclude_developer_cli_credential=True,
                                        exclude_visual_studio_code_credential=True,
                                        exclude_shared_token_cache_credential=True)
    return NetAppManagementClient(credential, subscription_id, base_url=settings.arm_endpoint,
                                  retry_total=0, polling_interval=settings.poll_interval_seconds)


def apply_tier(pv: dict[str, Any], target_level: str, settings: TierSettings, client_factory: ClientFactory, *,
               pvc: dict[str, Any] | None = None, metrics: StorageTierMetrics | None = None,
               timeout_s: float | None = None) -> MoveRecord:
    """Bring the ANF volume behind `pv` (bound to `pvc`) to `target_level`; never raises.

    Mapping or configuration problems come back as a `Failed` record (not retryable) naming the
    PV field or the `LANEX_ANF_*` variable to fix.
    """
    start = _now()

    def failed(reason: Reason, message: str, retryable: bool = False) -> MoveRecord:
        record = MoveRecord(from_level=None, to_level=target_level, start=start, end=_now(), result=MoveResult.FAILED,
                            message=f"cannot change the storage tier to {target_level}: {message}",
                            retryable=retryable, reason=reason)
        if metrics is not None:
            metrics.observe(record)
        LOGGER.warning("storage tier: %s", record.message)
        return record

    try:
        ref = volume_ref(pv, settings, pvc)
        settings.pool_name(target_level)
    except TierConfigError as exc:
        return failed(Reason.NOT_CONFIGURED, str(exc))
    except VolumeMappingError as exc:
        return failed(Reason.NOT_MAPPED, str(exc))
    try:
        client = client_factory(settings, ref.scope.subscription_id)
    except Exception as exc:  # noqa: BLE001
        failure = classify(exc, during="creating the Azure NetApp Files client")
        return failed(failure.reason, failure.message, failure.retryable)
    try:
        return PoolMover(client, settings, metrics=metrics).move(ref, target_level, timeout_s)
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()
