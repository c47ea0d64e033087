"""Bounded waits: what a waiting step's pods are stuck on, read from the cluster at a bounded rate.

Why it exists: a step that waits for another controller (the Job controller, mpi-operator, a CSI
provisioner) would wait forever when the cluster is stuck for a reason that only pods or Events
tell: an image that cannot be pulled, a Secret or ConfigMap that does not exist, no node that fits
the pod, a provisioner that keeps failing. `stuck_pod` reads the kubelet's and the scheduler's
verdicts from pod status (pure, no I/O); `starting_pods` lists the pods whose trouble only Events
tell (a volume that cannot be attached or mounted: diagnosis.py reads those). `ReadThrottle` keeps those extra reads cheap: each key
(a step's pods, a claim's Events) is read at most once per interval, however many passes run, so
a thousand waiting experiments cost a bounded number of requests and not one per pass each.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from lanex_operator.controller.status import parse_utc

# Container waiting reasons of the kubelet that do not go away by waiting (the image or a
# referenced Secret/ConfigMap must be fixed); ContainerCreating and PodInitializing do.
WAITING_REASONS = ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError")
# The scheduler's reason on PodScheduled=False: no node fits (resources, taints, affinity).
UNSCHEDULABLE = "Unschedulable"
# A container that keeps exiting non-zero and is restarted in place (restartPolicy OnFailure: the
# MPIJob's workers and launcher). Bounded by restarts, not time: a run may crash once after hours.
CRASH_LOOP = "CrashLoopBackOff"
# Warning Events of the kubelet and the attach/detach controller while a pod's volumes cannot be
# attached or mounted (a wrong ANF export rule, no NFS client on the node, a missing ConfigMap or Secret).
VOLUME_REASONS = ("FailedMount", "FailedAttachVolume")
STUCK_REASONS = (*WAITING_REASONS, UNSCHEDULABLE, CRASH_LOOP, *VOLUME_REASONS)
CREATING_REASONS = ("ContainerCreating", "PodInitializing")
ENTRIES_KEPT = 4096  # throttled results remembered; expired ones are dropped beyond this

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class StuckPod:
    """A pod that cannot start, why (the kubelet's or scheduler's reason and message) and since when."""

    pod: str
    reason: str
    message: str
    since: datetime | None  # from the cluster's own timestamps, so an operator restart keeps the clock
    restarts: int = 0  # of the crash-looping container

    def describe(self) -> str:
        return f"pod {self.pod} is {self.reason}: {self.message}" if self.message else f"pod {self.pod} is {self.reason}"

    def seconds(self, now: datetime) -> float:
        return 0.0 if self.since is None else max(0.0, (now - self.since).total_seconds())


def _stuck_in(pod: Mapping[str, Any]) -> StuckPod | None:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    name = str(meta.get("name", "?"))
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == UNSCHEDULABLE:
            return StuckPod(name, UNSCHEDULABLE, str(condition.get("message") or ""),
                            parse_utc(condition.get("lastTransitionTime")) or parse_utc(meta.get("creationTimestamp")))
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == CRASH_LOOP:
            restarts = int(container.get("restartCount") or 0)
            last = ((container.get("lastState") or {}).get("terminated")) or {}
            said = f"; it last said: {termination_text(last)}" if last else ""
            return StuckPod(name, CRASH_LOOP, f"container {container.get('name', '?')} restarted {restarts} times"
                                              f"{said}", parse_utc(status.get("startTime")), restarts)
        if waiting.get("reason") in WAITING_REASONS:
            # The kubelet gives no time for a waiting state: the pod has not run since it started.
            since = parse_utc(status.get("startTime")) or parse_utc(meta.get("creationTimestamp"))
            return StuckPod(name, str(waiting["reason"]), f"container {container.get('name', '?')}: "
                                                          f"{waiting.get('message') or waiting['reason']}", since)
    return None


def stuck_pod(pods: Iterable[Mapping[str, Any]]) -> StuckPod | None:
    """The pod stuck longest among `pods` (ties: by name), or None when none is stuck."""
    stuck = [found for found in map(_stuck_in, pods) if found is not None]
    if not stuck:
        return None
    return min(stuck, key=lambda s: (0, s.since.timestamp(), s.pod) if s.since is not None else (1, 0.0, s.pod))


def starting_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Scheduled pods still creating their containers (or none reported yet), oldest first: the ones
    whose stuck volume only a Warning Event tells."""
    found = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Pending":
            continue
        scheduled = any(c.get("type") == "PodScheduled" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
        containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        creating = all(((c.get("state") or {}).get("waiting") or {}).get("reason") in CREATING_REASONS
                       for c in containers)
        if (scheduled or containers) and creating:
            found.append(pod)
    return sorted(found, key=lambda p: (str(p["metadata"].get("creationTimestamp") or ""), str(p["metadata"].get("name"))))


def termination_text(terminated: Mapping[str, Any]) -> str:
    """What a terminated container said: its termination message, else its reason and exit code."""
    return (terminated.get("message") or "").strip() or \
        f"{terminated.get('reason', 'Terminated')} with exit code {terminated.get('exitCode')}"


class ReadThrottle:
    """The result of an async read, reused for `interval` seconds per key."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    async def read(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]  # type: ignore[no-any-return]
        value = await fetch()
        self._entries[key] = (now + self.interval, value)
        if len(self._entries) > ENTRIES_KEPT:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        return value

    def __len__(self) -> int:
        return len(self._entries)
