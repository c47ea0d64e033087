"""Which pod's log to show for an experiment, and waiting for it to start.

Why it exists: an experiment's log lives in pods it does not name itself (the MPIJob's launcher and
workers, the prepare Job's pod); they are found by their controllers' labels, else by the names
those controllers give them, the newest first (a restarted launcher leaves older pods behind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from lanex_operator.client.cluster import (
    JOB_NAME_LABELS,
    MPI_INDEX_LABEL,
    MPI_JOB_NAME_LABEL,
    MPI_ROLE_LABEL,
    ClusterClient,
    ClusterError,
)
from lanex_operator.controller.status import TERMINAL_PHASES
from lanex_operator.plan.objects import children_of


@dataclasses.dataclass(frozen=True)
class LogTarget:
    """Which pod's log to show: found by labels, else by the name its controller gives it."""

    what: str  # e.g. "launcher of mpijob default/foo-train"
    selector: str
    name_prefix: str
    exact_name: Optional[str]
    container: str


def log_target(obj: Mapping[str, Any], namespace: str, worker: Optional[int], prepare: bool) -> LogTarget:
    names = children_of(obj)
    if prepare:
        job = names.get("prepareJob") or f"{obj['metadata']['name']}-prepare"
        return LogTarget(f"pod of job {namespace}/{job}", f"{JOB_NAME_LABELS[0]}={job}", f"{job}-", None, "prepare")
    mpijob = names.get("mpiJob") or f"{obj['metadata']['name']}-train"
    if worker is not None:
        return LogTarget(f"worker {worker} of mpijob {namespace}/{mpijob}",
                         f"{MPI_JOB_NAME_LABEL}={mpijob},{MPI_ROLE_LABEL}=worker,{MPI_INDEX_LABEL}={worker}",
                         f"{mpijob}-worker-", f"{mpijob}-worker-{worker}", "worker")
    return LogTarget(f"launcher of mpijob {namespace}/{mpijob}",
                     f"{MPI_JOB_NAME_LABEL}={mpijob},{MPI_ROLE_LABEL}=launcher", f"{mpijob}-launcher-", None,
                     "launcher")


def pick_pod(pods: Sequence[Mapping[str, Any]], target: LogTarget, by_label: bool) -> Optional[dict[str, Any]]:
    """The newest pod of the target (a restarted launcher leaves older pods behind)."""
    def matches(pod: Mapping[str, Any]) -> bool:
        pod_name = pod["metadata"]["name"]
        if target.exact_name is not None:
            return pod_name == target.exact_name
        return pod_name.startswith(target.name_prefix) and (by_label or "-" not in pod_name[len(target.name_prefix):])

    chosen = [dict(p) for p in pods if by_label or matches(p)]
    chosen.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
    return chosen[-1] if chosen else None


def container_of(pod: Mapping[str, Any], preferred: str, requested: Optional[str]) -> str:
    """The container whose log to show: the one asked for, else the target's main one, else the first."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    if requested:
        return requested
    return preferred if preferred in names or not names else str(names[0])


def termination_message(pod: Mapping[str, Any], container: str) -> Optional[tuple[int, str]]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            for key in ("state", "lastState"):
                terminated = (status.get(key) or {}).get("terminated")
                if terminated:
                    return int(terminated.get("exitCode", 0)), str(terminated.get("message") or "")
    return None


def find_pod(cluster: "ClusterClient", target: LogTarget) -> Optional[dict[str, Any]]:
    pod = pick_pod(cluster.list_pods(target.selector), target, by_label=True)
    return pod if pod is not None else pick_pod(cluster.list_pods(), target, by_label=False)


def await_pod(cluster: "ClusterClient", name: str, target: LogTarget) -> dict[str, Any]:
    """With --follow: wait (by watching) until the target's pod exists and has left Pending."""
    while True:
        pod = find_pod(cluster, target)
        if pod is not None and (pod.get("status") or {}).get("phase") not in (None, "Pending"):
            return pod
        if pod is None and (cluster.get_experiment(name).get("status") or {}).get("phase") in TERMINAL_PHASES:
            raise ClusterError(f"no {target.what}: the experiment has finished")
        for seen in cluster.watch_pods(target.selector, timeout=30):
            if (seen.get("status") or {}).get("phase") not in (None, "Pending"):
                return seen
