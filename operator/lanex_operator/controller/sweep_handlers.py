"""kopf wiring of the LaneSweep controller, registered beside the experiment's handlers (same runtime).

Why it exists: like `handlers` for experiments, the edge stays tiny and all decisions live in
`sweeps`. One daemon per unfinished LaneSweep runs `SweepReconciler.reconcile` whenever something
about it changed: one of its trials (a LaneExperiment labelled `lanex.dev/sweep`, whose events
also feed the `TrialCache`), one of its dataset children (labelled the same way), or at least every
`resync_seconds`. Bursts of trial events are coalesced for a moment so that one pass (and one
status patch) answers many of them. A restart only re-reads state (the trials are listed once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import kopf

from lanex_operator.api.models import GROUP, PLURAL, VERSION
from lanex_operator.api.sweep import SWEEP_LABEL, SWEEP_PLURAL
from lanex_operator.controller.children import EXPERIMENT_LABEL, JOB, PVC, SNAPSHOT, ChildKind, Wakers
from lanex_operator.controller.kube import KubeError
from lanex_operator.controller.status import StatusBook
from lanex_operator.controller.sweeps import SWEEP_TERMINAL, SweepReconciler, TrialCache, release_sweep

log = logging.getLogger("lanex.operator.sweeps")
SWEEP_BOOK_KEY = "lanex_sweep_status_book"
COALESCE_SECONDS = 0.1  # after a poke: let the other trials' events of the same moment arrive too
RELEASE_TIMEOUT_SECONDS = 600  # retryable API errors while releasing a deleted sweep's dataset, at most this long


@dataclasses.dataclass
class SweepState:
    """What the sweep handlers share (the experiment handlers' OperatorState holds the client)."""

    trials: TrialCache = dataclasses.field(default_factory=TrialCache)
    wakers: Wakers = dataclasses.field(default_factory=Wakers)  # keyed by sweep: separate from experiments'
    reconciler: SweepReconciler | None = None


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in SWEEP_TERMINAL


def register_sweeps(registry: kopf.OperatorRegistry, state: Any) -> SweepState:
    """Register the LaneSweep handlers; `state` is the operator's `handlers.OperatorState`."""
    sweeps = SweepState()

    @kopf.on.startup(registry=registry, id="sweeps-startup")
    async def startup(**_: Any) -> None:
        # Runs after the experiments' startup handler (registered first), which logged in.
        assert state.kube is not None and state.preflight is not None
        sweeps.reconciler = SweepReconciler(state.kube, sweeps.trials, state.config, cache=state.cache,
                                            preflight=state.preflight)

    @kopf.daemon(GROUP, VERSION, SWEEP_PLURAL, registry=registry, id="sweep", when=_unfinished,
                 cancellation_timeout=2.0, backoff=state.config.retry_delay_seconds)
    async def sweep(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """Drive one sweep to Succeeded or Failed."""
        assert sweeps.reconciler is not None
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        book: StatusBook = memo.get(SWEEP_BOOK_KEY) or StatusBook(body.get("status"), int(meta.get("generation") or 1))
        memo[SWEEP_BOOK_KEY] = book
        sweeps.wakers.event(namespace, name)
        while True:
            book.generation = int(body["metadata"].get("generation") or 1)
            try:
                wait = await sweeps.reconciler.reconcile(body, book)
            except KubeError as exc:
                if exc.retryable:
                    raise kopf.TemporaryError(f"retryable API error: {exc}", delay=state.config.retry_delay_seconds) from exc
                await sweeps.reconciler.give_up(body, book, exc)  # its status write was refused: not retried forever
                return
            except Exception as exc:  # noqa: BLE001  (reconcile reports its own; this is the write of that report)
                log.exception(f"{namespace}/{name}: unexpected error")
                await sweeps.reconciler.give_up(body, book, exc)
                return
            if wait is None:
                log.info(f"{namespace}/{name} finished: {book.phase}: {book.data.get('message', '')}")
                return
            if await sweeps.wakers.wait(namespace, name, wait):
                await asyncio.sleep(COALESCE_SECONDS)

    @kopf.on.event(GROUP, VERSION, SWEEP_PLURAL, registry=registry, id="sweep-wake")
    async def sweep_changed(type: str, name: str, namespace: str, meta: kopf.Meta, **_: Any) -> None:
        if type != "DELETED":
            sweeps.wakers.poke_if_changed(namespace, name, int(meta.get("generation") or 0))

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="sweep-trials", labels={SWEEP_LABEL: kopf.PRESENT})
    async def trial_changed(type: str, body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> None:
        if type == "DELETED":
            sweeps.trials.forget(dict(body))
        else:
            sweeps.trials.put(dict(body))
        sweeps.wakers.poke(namespace, labels[SWEEP_LABEL])

    # Bounded: a deletion that keeps failing lets the sweep go (keeping its dataset) rather than block it forever.
    @kopf.on.delete(GROUP, VERSION, SWEEP_PLURAL, registry=registry, id="sweep-retention",
                    timeout=RELEASE_TIMEOUT_SECONDS)
    async def sweep_deleted(body: kopf.Body, name: str, namespace: str, **_: Any) -> None:
        """Honour retention.dataset before the finalizer goes (trials go by their owner references)."""
        assert state.kube is not None
        try:
            summary = await release_sweep(state.kube, body)
        except KubeError as exc:
            if exc.retryable:
                raise kopf.TemporaryError(f"retryable API error: {exc}", delay=state.config.retry_delay_seconds) from exc
            summary = f"kept what is left of the dataset: API request failed and cannot be retried: {exc}"
            kopf.event(dict(body), type="Warning", reason="ReleaseFailed", message=summary[:1024])
        except Exception as exc:  # noqa: BLE001  a bug must not keep the finalizer forever
            log.exception(f"{namespace}/{name}: unexpected error while releasing the dataset")
            summary = f"kept what is left of the dataset: the operator failed ({type(exc).__name__}: {exc})"
            kopf.event(dict(body), type="Warning", reason="ReleaseFailed", message=summary[:1024])
        log.info(f"{namespace}/{name} deleted: {summary}")
        kopf.event(dict(body), type="Normal", reason="Deleted", message=summary)
        sweeps.wakers.forget(namespace, name)
        sweeps.trials.drop(namespace, name)

    for kind in (PVC, JOB, SNAPSHOT):
        _register_dataset_child(registry, state, sweeps, kind)
    return sweeps


def _register_dataset_child(registry: kopf.OperatorRegistry, state: Any, sweeps: SweepState, kind: ChildKind) -> None:
    # A trial's own children inherit its labels (kopf.adopt), the sweep label too: those are the trial's news.
    @kopf.on.event(kind.group, kind.version, kind.plural, registry=registry, id=f"sweep-child-{kind.plural}",
                   labels={SWEEP_LABEL: kopf.PRESENT, EXPERIMENT_LABEL: kopf.ABSENT})
    async def child_changed(type: str, body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> None:
        # Into the experiments' child cache too: every trial reads the dataset snapshot it restores from.
        if type == "DELETED":
            state.cache.forget(kind, dict(body))
        else:
            state.cache.put(kind, dict(body))
        sweeps.wakers.poke(namespace, labels[SWEEP_LABEL])
