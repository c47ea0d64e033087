"""Why a waiting step does not move: its controller's Warning Events and its pods that cannot start.

Shared by the experiment and the sweep reconcilers, so that every step that waits for another
controller (the Job controller, mpi-operator, a CSI provisioner, the kubelet) says the same things
the same way: the cluster's own reason and message in the step's condition within
`stuck_check_seconds` of the wait starting, one Warning Event when it gets stuck, and a failure
message once the wait has lasted its bound. Reads go through a `ReadThrottle`, so a thousand
waiting steps cost a bounded number of requests, not one per pass each.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.kube import Kube, KubeError, object_path
from lanex_operator.controller.status import clip, parse_utc
from lanex_operator.controller.waits import (
    CRASH_LOOP,
    STUCK_REASONS,
    VOLUME_REASONS,
    ReadThrottle,
    StuckPod,
    starting_pods,
    stuck_pod,
    termination_text,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
STARTING_PODS_EXAMINED = 4  # Events read per step and interval for pods still creating their containers


class Book(Protocol):
    """The part of a StatusBook (experiments and sweeps) a diagnosis writes to."""

    def condition(self, type_: str) -> dict[str, Any] | None: ...
    def since(self, type_: str) -> float: ...
    def set_condition(self, type_: str, status: str, reason: str, message: str) -> bool: ...
    def event(self, type_: str, reason: str, message: str) -> None: ...


class WaitDiagnosis:
    """Reads and reports why one step of an experiment or a sweep waits."""

    def __init__(self, kube: Kube, config: OperatorConfig, now: Callable[[], datetime]) -> None:
        self.kube = kube
        self.config = config
        self.now = now
        self.reads = ReadThrottle(config.stuck_check_seconds)

    async def quiet(self, read: Awaitable[T], default: T) -> T:
        """A diagnostic read (pods, Events): its failure must not fail the experiment, only go unexplained."""
        try:
            return await read
        except KubeError as exc:
            log.warning("diagnostic read failed (the wait stays bounded, only unexplained): %s", exc)
            return default

    async def warning_event(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """The latest Warning Event that a controller recorded about one object (core/v1 Events, by involvedObject)."""
        events = await self.kube.list(object_path("v1", "events", namespace),
                                      field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
        warnings = [e for e in events if e.get("type") == "Warning"]
        if not warnings:
            return None
        return max(warnings, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "",
                                            (e.get("metadata") or {}).get("name", "")))

    async def last_warning(self, namespace: str, kind: str, name: str) -> str:
        last = await self.warning_event(namespace, kind, name)
        return "" if last is None else f"{last.get('reason', 'Warning')}: {last.get('message', '')}"

    async def show_warning(self, book: Book, step: str, namespace: str, kind: str, name: str,
                           elapsed: float, what: str) -> None:
        """While a child waits on its controller, show that controller's latest Warning Event about it (a
        provisioner's ProvisioningFailed, mpi-operator's ValidationError) in the step's condition."""
        if elapsed < self.config.stuck_check_seconds:
            return
        warning = await self.reads.read(("events", kind, namespace, name),
                                        lambda: self.quiet(self.warning_event(namespace, kind, name), None))
        if warning is None:
            return
        reason = str(warning.get("reason") or "Warning")
        message = clip(f"{what}: {reason}: {warning.get('message', '')}")
        if book.set_condition(step, "Unknown", reason, message):
            book.event("Warning", reason, message)

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """A waiting step's pods, read at most once per `stuck_check_seconds` (none when the read fails)."""
        return await self.reads.read(("pods", namespace, selector), lambda: self.quiet(
            self.kube.list(object_path("v1", "pods", namespace), label_selector=selector), []))

    async def claim_unbound(self, book: Book, step: str, namespace: str, claim: str,
                            phase: str | None) -> tuple[str | None, float]:
        """A claim that is not Bound yet: its provisioner's latest Warning shown in the step's condition while it
        waits. Returns (the failure message once it waited `dataset_bound_timeout_seconds`, else None; the seconds
        left until then)."""
        elapsed, limit = book.since(step), self.config.dataset_bound_timeout_seconds
        if elapsed >= limit:
            warning = await self.last_warning(namespace, "PersistentVolumeClaim", claim)
            return clip(f"PersistentVolumeClaim {claim} was not bound after {int(elapsed)}s"
                        + (f": {warning}" if warning else "")), 0.0
        await self.show_warning(book, step, namespace, "PersistentVolumeClaim", claim, elapsed,
                                f"PersistentVolumeClaim {claim} is {phase or 'Pending'}")
        return None, limit - elapsed

    async def stuck_pod(self, book: Book, step: str, namespace: str, selector: str) -> StuckPod | None:
        """The stuck pod of a step that has waited at least `stuck_check_seconds`: from pod status (the
        kubelet's and the scheduler's reasons), else from the Warning Events of pods that are still
        creating their containers (a volume that cannot be attached or mounted says so only there)."""
        if book.since(step) < self.config.stuck_check_seconds:
            return None
        pods = await self.pods(namespace, selector)
        found = stuck_pod(pods)
        if found is not None:
            return found
        for pod in starting_pods(pods)[:STARTING_PODS_EXAMINED]:
            meta = pod["metadata"]
            warning = await self.reads.read(("events", "Pod", namespace, meta["name"]), lambda: self.quiet(
                self.warning_event(namespace, "Pod", meta["name"]), None))
            if warning is not None and warning.get("reason") in VOLUME_REASONS:
                since = parse_utc(warning.get("firstTimestamp") or warning.get("eventTime")) \
                    or parse_utc(meta.get("creationTimestamp"))
                return StuckPod(meta["name"], str(warning["reason"]), str(warning.get("message") or ""), since)
        return None

    async def pods_stuck(self, book: Book, step: str, owner: str, namespace: str, selector: str) -> str | None:
        """Show a pod of `owner` that cannot start in the step's condition (Unknown, with the cluster's reason
        and message, and one Warning Event when it gets stuck); returns the failure message once it has been
        stuck for `pod_stuck_timeout_seconds`, or crash-looped `crash_loop_restarts` times."""
        stuck = await self.stuck_pod(book, step, namespace, selector)
        if stuck is None:
            if (book.condition(step) or {}).get("reason") in STUCK_REASONS:  # it got going again
                book.set_condition(step, "Unknown", "InProgress", f"{owner}: its pods are no longer stuck")
            return None
        if stuck.reason == CRASH_LOOP:
            restarts, most = stuck.restarts, self.config.crash_loop_restarts
            if restarts >= most:
                return clip(f"{owner}: pod {stuck.pod} kept crashing, {restarts} restarts "
                            f"(LANEX_OPERATOR_CRASH_LOOP_RESTARTS={most:g}): {stuck.message}")
        else:
            seconds, limit = stuck.seconds(self.now()), self.config.pod_stuck_timeout_seconds
            if seconds >= limit:
                return clip(f"{owner}: pod {stuck.pod} was {stuck.reason} for {int(seconds)}s "
                            f"(LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS={limit:g}): {stuck.message}")
        message = clip(f"{owner}: {stuck.describe()}")
        # One Event when the step gets stuck: the kubelet flips between ErrImagePull and ImagePullBackOff
        # (or CrashLoopBackOff and a short run) at every back-off, which updates the condition but is not news.
        previous = (book.condition(step) or {}).get("reason")
        if book.set_condition(step, "Unknown", stuck.reason, message) and previous not in STUCK_REASONS:
            book.event("Warning", stuck.reason, message)
        return None

    async def pod_message(self, namespace: str, selector: str) -> str:
        """The termination message (or reason and exit code) of the latest terminated pod matching `selector`."""
        found = await self.last_termination(namespace, selector)
        return f"pod {found[0]}: {found[1]}" if found else ""

    async def last_termination(self, namespace: str, selector: str) -> tuple[str, str] | None:
        """(pod name, termination message or reason and exit code) of the latest terminated pod matching
        `selector`; None when none has terminated."""
        pods = await self.kube.list(object_path("v1", "pods", namespace), label_selector=selector)
        best: tuple[str, str, str] | None = None
        for pod in pods:
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (container.get("state") or {}).get("terminated") or \
                             (container.get("lastState") or {}).get("terminated")
                if terminated:
                    stamp = terminated.get("finishedAt") or ""
                    if best is None or stamp >= best[0]:
                        best = (stamp, pod["metadata"]["name"], termination_text(terminated))
        return None if best is None else (best[1], best[2])

