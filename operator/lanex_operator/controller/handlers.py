"""kopf wiring: which events reach the reconciler, and how the operator logs in and starts.

Why it exists: kopf's decorators are the operator's edge; they stay tiny and keyword-only, and all
decisions live in `reconciler` (lifecycle) and `retention` (deletion). The design is level-
triggered: one daemon per unfinished LaneExperiment runs `Reconciler.reconcile` whenever something
about it changed (its own events, or a watch event of a labelled child, which pokes it through
`Wakers`) and at least every `resync_seconds`. A restart only re-reads state: progress is in the
experiment's status and in the children themselves, never in memory. While an experiment trains, a
second daemon (`progress`) reads the launcher's progress into `status.progress`; being its own task
with its own API client and request budget, it never delays a lifecycle step.

Handlers are registered into an explicit `kopf.OperatorRegistry` (no import-time registration), so
tests and `run_operator` can build as many independent operators as they need.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import kopf

from lanex_operator.api.models import GROUP, PLURAL, VERSION, Phase
from lanex_operator.controller.children import EXPERIMENT_LABEL, WATCHED_KINDS, ChildCache, ChildKind, Wakers
from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.grants import Grants
from lanex_operator.controller.kube import USER_AGENT, Kube, KubeError
from lanex_operator.controller.metrics import OperatorMetrics
from lanex_operator.controller.preflight import Preflight
from lanex_operator.controller.progress import ProgressFollower
from lanex_operator.controller.reconciler import STOP_ANNOTATION, Reconciler
from lanex_operator.controller.retention import release
from lanex_operator.controller.status import TERMINAL_PHASES, StatusBook, clip
from lanex_operator.controller.tier_steps import StorageTiering

FINALIZER = "lanex.dev/finalizer"
log = logging.getLogger("lanex.operator")
BOOK_KEY = "lanex_status_book"


@dataclasses.dataclass
class OperatorState:
    """What all handlers share; lives in kopf's operator-level memo as `memo.lanex`."""

    config: OperatorConfig
    metrics: OperatorMetrics
    cache: ChildCache = dataclasses.field(default_factory=ChildCache)
    wakers: Wakers = dataclasses.field(default_factory=Wakers)
    kube: Kube | None = None
    preflight: Preflight | None = None  # shared by experiments and sweeps (its lookups are cached)
    reconciler: Reconciler | None = None
    progress: ProgressFollower | None = None


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """kopf settings for one replica: our finalizer; kopf's handler progress in annotations (the
    experiment's own progress is its status, written by the reconciler)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lanex.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="lanex.dev",
                                                                            key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # kopf's own log lines; our Events are explicit
    # The apiserver parses timeoutSeconds as an integer and refuses "300.0" with a 400 (kopf sends
    # the value as given); the emulator was lenient, the real one is not.
    settings.watching.server_timeout = max(1, round(config.watch_server_timeout_seconds))
    settings.watching.client_timeout = config.watch_server_timeout_seconds + 10
    settings.networking.error_backoffs = list(config.api_error_backoffs)
    settings.networking.request_timeout = config.request_timeout_seconds
    settings.batching.error_delays = [min(d, config.retry_delay_seconds) for d in (1, 1, 2, 5, 10, 30)]
    settings.background.instant_exit_timeout = 0.5


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL_PHASES


def _training(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == Phase.TRAINING.value


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    """Register every handler of the operator into `registry`."""

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
        configure_settings(settings, state.config)
        info = kopf.login_via_client(logger=logger, settings=settings)
        if info is None:
            raise kopf.PermanentError("cannot log in: neither in-cluster nor kubeconfig credentials were found")
        state.kube = Kube.from_connection_info(info, state.config.request_timeout_seconds)
        preflight = state.preflight = Preflight(state.kube, state.config.preflight_cache_seconds,
                                                grants=Grants.from_env())
        tiering = StorageTiering.from_env(state.metrics.storage_tier)
        if tiering.problem:
            logger.warning(f"storage tier: {tiering.problem} (experiments that ask for a service level train at "
                           "their volume's current level)")
        elif tiering.settings is not None:
            logger.info(f"storage tier: capacity pools configured for {', '.join(sorted(tiering.settings.pools))}")
        state.reconciler = Reconciler(state.kube, state.cache, preflight, state.metrics, state.config,
                                      tiering=tiering)
        # Its own client (own connections, own User-Agent in audit logs) so that progress reads never
        # queue in front of lifecycle requests.
        progress_kube = Kube.from_connection_info(info, state.config.request_timeout_seconds)
        progress_kube.set_user_agent(f"{USER_AGENT} progress")
        state.progress = ProgressFollower(progress_kube, state.config, state.metrics, state.wakers)
        for problem in await preflight.cluster():
            logger.warning(f"preflight: {problem.reason}: {problem.message} (experiments wait until it is fixed)")

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(**_: Any) -> None:
        if state.kube is not None:
            await state.kube.close()
        if state.progress is not None:
            await state.progress.kube.close()

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, id="lifecycle", when=_unfinished, cancellation_timeout=2.0,
                 backoff=state.config.retry_delay_seconds)
    async def experiment(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """Drive one experiment to Succeeded or Failed."""
        assert state.reconciler is not None
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        book: StatusBook = memo.get(BOOK_KEY) or StatusBook(body.get("status"), int(meta.get("generation") or 1))
        memo[BOOK_KEY] = book  # survives daemon restarts: it holds writes the API has not confirmed yet
        state.wakers.event(namespace, name)
        while True:
            book.generation = int(body["metadata"].get("generation") or 1)
            try:
                wait = await state.reconciler.reconcile(body, book)
            except kopf.TemporaryError:
                raise
            except Exception as exc:
                if isinstance(exc, KubeError) and exc.retryable:
                    raise kopf.TemporaryError(f"retryable API error: {exc}",
                                              delay=state.config.retry_delay_seconds) from exc
                # The reconciler reports its own errors as Failed; this is the write of that report failing.
                # Retrying it forever would repeat the same refusal every backoff: the daemon ends here, and an
                # operator restart (or a change to the experiment) gives it one more pass.
                state.metrics.reconcile_errors.labels(kind="unexpected").inc()
                log.exception(f"{namespace}/{name}: its failure could not be recorded; not retried")
                kopf.event(dict(body), type="Warning", reason="ReconcileError",
                           message=clip(f"the operator cannot handle this experiment and could not record that in "
                                        f"its status ({type(exc).__name__}: {exc}); it is not retried: report this "
                                        f"as a lanex bug with the operator's log"))
                return
            if wait is None:
                log.info(f"{namespace}/{name} finished: {book.phase}: {book.data.get('message', '')}")
                return
            await state.wakers.wait(namespace, name, wait)

    # cancellation_timeout: time for the final read once training ended, which may wait on the budget.
    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, id="progress", when=_training, cancellation_timeout=10.0,
                 backoff=state.config.retry_delay_seconds)
    async def training_progress(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        """While the experiment trains: read the launcher's progress into status.progress (kopf stops
        this daemon once the phase is no longer Training)."""
        assert state.progress is not None
        try:
            await state.progress.follow(body, stopped)
        except KubeError:
            raise  # kopf retries after its backoff: the API server may answer again
        except Exception as exc:  # noqa: BLE001  progress is a view: an error nothing foresaw ends it, said once
            log.exception(f"{body['metadata']['namespace']}/{body['metadata']['name']}: progress not followed")
            state.metrics.reconcile_errors.labels(kind="unexpected").inc()
            kopf.event(dict(body), type="Warning", reason="ProgressUnreadable",
                       message=clip(f"training progress is no longer followed ({type(exc).__name__}: {exc}); "
                                    f"training itself is not affected: report this as a lanex bug with the "
                                    f"operator's log"))

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="wake")
    async def experiment_changed(type: str, name: str, namespace: str, meta: kopf.Meta, **_: Any) -> None:
        # Status writes are the daemon's own; only a new generation (spec change) is news to it,
        # and a sweep's request to stop (an annotation, no new generation).
        if type != "DELETED":
            state.wakers.poke_if_changed(namespace, name, int(meta.get("generation") or 0))
            if STOP_ANNOTATION in (meta.get("annotations") or {}):
                state.wakers.poke(namespace, name)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="retention")
    async def experiment_deleted(body: kopf.Body, uid: str, name: str, namespace: str,
                                 **_: Any) -> None:
        """Honour the retention policy before the finalizer goes."""
        assert state.kube is not None
        released = await release(state.kube, body)
        log.info(f"{namespace}/{name} deleted: {released.summary()}")
        kopf.event(dict(body), type="Normal", reason="Deleted", message=released.summary())
        state.metrics.observe_phase(uid, None)
        if state.progress is not None:
            state.progress.forget(namespace, name, uid)
        state.wakers.forget(namespace, name)

    for kind in WATCHED_KINDS:
        _register_child(registry, state, kind)

    from lanex_operator.controller.sweep_handlers import register_sweeps  # LaneSweeps: same runtime, own module

    register_sweeps(registry, state)


def _register_child(registry: kopf.OperatorRegistry, state: OperatorState, kind: ChildKind) -> None:
    @kopf.on.event(kind.group, kind.version, kind.plural, registry=registry, id=f"child-{kind.plural}",
                   labels={EXPERIMENT_LABEL: kopf.PRESENT})
    async def child_changed(type: str, body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> None:
        raw = dict(body)
        if type == "DELETED":
            state.cache.forget(kind, raw)
        else:
            state.cache.put(kind, raw)
        state.wakers.poke(namespace, labels[EXPERIMENT_LABEL])
