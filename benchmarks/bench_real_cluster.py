"""Benchmark: the operator on the real control plane (tools/cluster), experiments or sweeps at scale.

The chart is installed with the real helm and the operator runs as the chart's ServiceAccount, as in
the tests; upstream mpi-operator, kube-controller-manager, the CSI provisioner and snapshot
controller move the children, kwok plays the pods (the launcher's log is a recording of a real run
of this trainer). Everything is timed from kube-apiserver's audit log (microsecond timestamps):

* reaction p50/p95: (a) spec applied -> the operator's first child (the dataset claim);
  (b) child done -> next step: from a controller's last status write on a child (claim bound, prepare
  Job complete, MPIJob succeeded, snapshot ready) to the operator's next request for that experiment.
  Goal: p95 < 1 s;
* API requests per experiment (the operator's, watches excluded), with a breakdown by verb and resource;
* the operator's peak RSS (goal < 300 MiB); kube-apiserver's and etcd's CPU seconds during the run.

    python benchmarks/bench_real_cluster.py experiments --count 100
    python benchmarks/bench_real_cluster.py sweeps --sweeps 10 --trials 100 --parallelism 10
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import signal
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks"), str(REPO / "tools" / "cluster")]

import yaml  # noqa: E402
from bench_operator import percentile  # noqa: E402
from bench_sweeps import sweep_body  # noqa: E402
from k8s.real_operator import NAMESPACE, lanex_on_cluster_session  # noqa: E402
from k8s.scenarios import experiment  # noqa: E402
from lanex_cluster.audit import completed_calls, event_time  # noqa: E402
from lanex_cluster.cluster import LocalCluster  # noqa: E402



class TempDirs:
    """What lanex_on_cluster_session needs of pytest's tmp_path_factory."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> pathlib.Path:
        path = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        return path


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The steps the operator takes, each on the exact child it waits for: (the child's resource, its name's
# suffix after the experiment's, the operator's next step as (verb, resource)). A child is "done" at the
# last status write its controller made on it before the operator took the next step (the operator
# takes it only once the child is done); the reaction is from there to the operator's first call after.
# Writes a controller makes later (mpi-operator's clean-up, the pvc-protection controller) and the
# children of children (mpi-operator's launcher Job) are not reactions of the operator's.
STEPS = (
    ("persistentvolumeclaims", "-data", ("create", "jobs")),
    ("jobs", "-prepare", ("create", "mpijobs")),
    ("mpijobs", "-train", ("create", "volumesnapshots")),
)


def reactions(events: list[dict[str, Any]], names: list[str], operator: str) -> dict[str, list[float]]:
    """Per step, seconds from the trigger (spec applied; a child done) to the operator's next call."""
    known = set(names)
    applied: dict[str, float] = {}
    operator_calls: dict[str, list[tuple[float, str, str]]] = collections.defaultdict(list)
    status_writes: dict[tuple[str, str], list[float]] = collections.defaultdict(list)  # (resource, name) -> times
    for event in events:
        ref = event.get("objectRef") or {}
        name, resource, verb = ref.get("name") or "", ref.get("resource") or "", event["verb"]
        if verb in ("watch", "list") or not name:
            continue
        owner = next((name[:-len(suffix)] for _, suffix, _ in STEPS if name.endswith(suffix)
                      and name[:-len(suffix)] in known), name if name in known else None)
        if event["user"]["username"] == operator:
            if owner is not None:
                operator_calls[owner].append((event_time(event), verb, resource))
            elif resource == "volumesnapshots":  # named <experiment>-<timestamp>
                owner = next((n for n in known if name.startswith(n + "-")), None)
                if owner is not None:
                    operator_calls[owner].append((event_time(event), verb, resource))
        elif resource == "laneexperiments" and verb == "create" and name in known:
            applied[name] = event_time(event)
        elif ref.get("subresource") == "status" and verb in ("update", "patch"):
            status_writes[(resource, name)].append(event_time(event))
    result: dict[str, list[float]] = collections.defaultdict(list)
    for owner, at in applied.items():
        later = [t for t, _, _ in operator_calls[owner] if t >= at]
        if later:
            result["spec applied -> first call"].append(min(later) - at)
    for owner in known:
        calls = sorted(operator_calls[owner])
        for resource, suffix, (next_verb, next_resource) in STEPS:
            step = next((t for t, verb, res in calls if (verb, res) == (next_verb, next_resource)), None)
            writes = [t for t in status_writes.get((resource, owner + suffix), []) if step is None or t <= step]
            if step is None or not writes:
                continue
            done = max(writes)
            result[f"{resource} done -> next call"].append(min(t for t, _, _ in calls if t >= done) - done)
    return result


def wait_all(cluster: LocalCluster, resource: str, count: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    phases: dict[str, int] = {}
    while time.monotonic() < deadline:
        items = cluster.get(resource, "-A")["items"]
        phases = collections.Counter((i.get("status") or {}).get("phase") or "-" for i in items)
        if sum(phases[p] for p in ("Succeeded", "Failed", "Stopped")) >= count and len(items) >= count:
            break
        time.sleep(2)
    return dict(phases)


def run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench-real-cluster-"))
    cluster = LocalCluster(root / "cluster").start()
    session = lanex_on_cluster_session(cluster, TempDirs(root))
    lanex = next(session)
    try:
        cluster.ensure_namespace("bench")
        if mode == "experiments":
            names = [f"bench-{i:03d}" for i in range(args.count)]
            # No GPUs asked: the 16 fake GPUs would otherwise queue all but 8 experiments, and this
            # measures the operator, not the cluster's capacity.
            bodies = [experiment(name, "bench", {"training": {"gpusPerWorker": 0}}) for name in names]
            resource, expected = "lx", args.count
        else:
            names = [f"sweep-{i:02d}" for i in range(args.sweeps)]
            bodies = [sweep_body(name, args.trials, args.parallelism) for name in names]
            for body in bodies:
                body["metadata"]["namespace"] = "bench"
                body["spec"]["template"]["training"]["gpusPerWorker"] = 0
            resource, expected = "lxs", args.sweeps
        apiserver, etcd = cluster.processes["kube-apiserver"].popen, cluster.processes["etcd"].popen
        cpu_before = {"kube-apiserver": cpu_seconds(apiserver.pid), "etcd": cpu_seconds(etcd.pid)}
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(bodies), timeout=600)
        phases = wait_all(cluster, resource, expected, args.timeout)
        wall = time.monotonic() - started
        cpu = {"kube-apiserver": cpu_seconds(apiserver.pid) - cpu_before["kube-apiserver"],
               "etcd": cpu_seconds(etcd.pid) - cpu_before["etcd"]}
        trials = [i["metadata"]["name"] for i in cluster.get("lx", "-n", "bench")["items"]]
        operator_user = f"system:serviceaccount:{NAMESPACE}:{lanex.chart.service_account}"
        events = completed_calls(cluster.audit_log)
        calls = [e for e in events if e["user"]["username"] == operator_user and e["verb"] != "watch"]
        breakdown = collections.Counter(
            f"{e['verb']} {(e.get('objectRef') or {}).get('resource', '?')}"
            + (f"/{e['objectRef']['subresource']}" if (e.get("objectRef") or {}).get("subresource") else "")
            for e in calls)
        timings = reactions(events, trials, operator_user)
        return {
            "mode": mode, "experiments": len(trials), "phases": phases, "wall_seconds": round(wall, 1),
            "requests_per_experiment": round(len(calls) / max(1, len(trials)), 1),
            "requests_breakdown": dict(breakdown.most_common(12)),
            "reaction_seconds": {step: {"n": len(v), "p50": round(percentile(v, 0.5), 3),
                                        "p95": round(percentile(v, 0.95), 3)} for step, v in sorted(timings.items())},
            "operator_peak_rss_mib": round(lanex.operator.peak_rss_kib() / 1024, 1),
            "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
        }
    finally:
        session.close()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    experiments = sub.add_parser("experiments")
    experiments.add_argument("--count", type=int, default=100)
    sweeps = sub.add_parser("sweeps")
    sweeps.add_argument("--sweeps", type=int, default=10)
    sweeps.add_argument("--trials", type=int, default=100)
    sweeps.add_argument("--parallelism", type=int, default=10)
    for each in (experiments, sweeps):
        each.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    # A SIGTERM (a timeout, a Ctrl-C in another shell) unwinds through run()'s cleanup: the control
    # plane and the operator it started are stopped, not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(json.dumps(run(args.mode, args), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
