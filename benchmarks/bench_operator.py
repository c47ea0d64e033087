"""Benchmark: N LaneExperiments at once through the whole simulated lifecycle.

Runs the real operator (`python -m lanex_operator.controller.runtime`, a separate process) against the
emulated cluster of tests/k8s and reports:

* wall time from the first create to the last experiment Succeeded;
* API requests per experiment (the operator's own client plus kopf's), with a breakdown;
* the operator process's peak memory (VmHWM);
* reaction time: from a child's final status change (PVC Bound, Job Complete, MPIJob Succeeded,
  VolumeSnapshot ready), as written by the simulated controller, to the operator's next request
  for that experiment (median and p95). Goal: under 1 s at 100 experiments;
* the progress reads (the launcher's log tail, `status.progress` writes): requests per experiment and
  the busiest second, against the budget (`--progress-rps`, the operator's default 10/s).

    python benchmarks/bench_operator.py --experiments 100
    python benchmarks/bench_operator.py --experiments 100 --training-seconds 20 --progress-interval 2
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from k8s.emulator import ApiCall  # noqa: E402
from k8s.harness import EmulatedCluster  # noqa: E402
from k8s.operator_proc import OPERATOR_USER_AGENTS, OperatorProcess  # noqa: E402
from k8s.scenarios import experiment  # noqa: E402

# Child status writes by the simulated controllers that complete a step: (resource, name suffix, field).
STEP_SIGNALS = {
    "dataset bound": ("persistentvolumeclaims/status", "-data"),
    "download complete": ("jobs/status", "-prepare"),
    "training succeeded": ("mpijobs/status", "-train"),
    "snapshot ready": ("volumesnapshots/status", ""),
}


def is_progress(call: ApiCall) -> bool:
    """A request of the operator's progress reader (its own client, `lanex-operator/VERSION progress`)."""
    return call.user_agent.endswith(" progress")


def belongs(call: ApiCall, name: str) -> bool:
    return call.name is not None and (call.name == name or call.name.startswith(name + "-"))


def reaction_times(calls: list[ApiCall], names: list[str]) -> dict[str, list[float]]:
    """Per step: seconds from the simulated controller's last status write to the operator's next request."""
    by_experiment: dict[str, list[ApiCall]] = collections.defaultdict(list)
    for call in calls:
        for name in names:
            if belongs(call, name):
                by_experiment[name].append(call)
                break
    result: dict[str, list[float]] = collections.defaultdict(list)
    for name, own in by_experiment.items():
        for step, (resource, suffix) in STEP_SIGNALS.items():
            signals = [c for c in own if c.resource == resource and c.user_agent.startswith("lanex-cluster-sim")
                       and c.name is not None and c.name.startswith(name + suffix)]
            if not signals:
                continue
            last = signals[-1]
            after = [c for c in own if c.at > last.at and c.user_agent.startswith("lanex-operator/")
                     and not is_progress(c)]
            if after:
                result[step].append(after[0].at - last.at)
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(count: int, timeout: float, training_seconds: float = 0.15, progress_interval: float = 30.0,
        progress_rps: float = 10.0) -> dict[str, Any]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-"))
    names = [f"bench-{i:03d}" for i in range(count)]
    with EmulatedCluster(workdir, namespaces=("default",)) as cluster:
        cluster.knobs.mpijob_duration = training_seconds  # the simulated launcher logs a progress line per step
        settings = {"LANEX_OPERATOR_RESYNC_SECONDS": "5", "LANEX_OPERATOR_PREFLIGHT_CACHE_SECONDS": "10",
                    "LANEX_OPERATOR_PROGRESS_INTERVAL_SECONDS": str(progress_interval),
                    "LANEX_OPERATOR_PROGRESS_REQUESTS_PER_SECOND": str(progress_rps)}
        operator = OperatorProcess(cluster.kubeconfig, workdir, settings).start()
        try:
            baseline = len(cluster.calls())
            started = time.monotonic()
            for name in names:
                cluster.create(experiment(name))
            pending = set(names)
            while pending and time.monotonic() - started < timeout:
                for item in cluster.list("laneexperiments", "default"):
                    if (item.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        pending.discard(item["metadata"]["name"])
                time.sleep(0.1)
            wall = time.monotonic() - started
            peak_kib = operator.peak_rss_kib()
            operator_cpu = operator.cpu_seconds()
            cluster_cpu = time.process_time()
        finally:
            operator.stop()
        calls = cluster.calls()[baseline:]
        phases = collections.Counter((item.get("status") or {}).get("phase")
                                     for item in cluster.list("laneexperiments", "default"))
    own = [c for c in calls if c.user_agent.startswith(OPERATOR_USER_AGENTS)]
    mutating = [c for c in own if c.verb not in ("watch",)]
    breakdown = collections.Counter(f"{c.user_agent.split('/')[0]} {c.verb} {c.resource}" for c in mutating)
    reactions = reaction_times(calls, names)
    all_reactions = [value for values in reactions.values() for value in values]
    progress = sorted(c.at for c in own if is_progress(c))
    busiest = max((sum(1 for at in progress if t <= at < t + 1.0) for t in progress), default=0)
    return {
        "experiments": count,
        "phases": dict(phases),
        "unfinished": len(pending),
        "wall_seconds": round(wall, 2),
        "operator_requests_per_experiment": round(len(mutating) / count, 1),
        "operator_requests_breakdown_per_experiment": {k: round(v / count, 2) for k, v in sorted(breakdown.items())},
        "operator_peak_rss_mib": round(peak_kib / 1024, 1),
        "operator_cpu_seconds": round(operator_cpu, 1),
        "emulated_cluster_cpu_seconds": round(cluster_cpu, 1),
        "reaction_seconds": {
            step: {"n": len(values), "median": round(statistics.median(values), 3),
                   "p95": round(percentile(values, 0.95), 3)}
            for step, values in reactions.items() if values
        },
        "reaction_seconds_all": {"n": len(all_reactions), "median": round(statistics.median(all_reactions), 3),
                                 "p95": round(percentile(all_reactions, 0.95), 3)} if all_reactions else {},
        "progress": {"interval_seconds": progress_interval, "budget_requests_per_second": progress_rps,
                     "training_seconds": training_seconds, "requests_per_experiment": round(len(progress) / count, 1),
                     "busiest_second_requests": busiest},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=100, help="LaneExperiments created at once.")
    parser.add_argument("--timeout", type=float, default=300.0, help="Give up after this many seconds.")
    parser.add_argument("--training-seconds", type=float, default=0.15,
                        help="How long each simulated training runs (its launcher logs progress meanwhile).")
    parser.add_argument("--progress-interval", type=float, default=30.0,
                        help="The operator's progress read interval per experiment (its default: 30 s).")
    parser.add_argument("--progress-rps", type=float, default=10.0,
                        help="The operator's progress request budget, requests/s in all (its default: 10).")
    args = parser.parse_args()
    report = run(args.experiments, args.timeout, args.training_seconds, args.progress_interval, args.progress_rps)
    print(json.dumps(report, indent=2))
    if report["unfinished"]:
        raise SystemExit(f"{report['unfinished']} experiments did not finish within {args.timeout}s")


if __name__ == "__main__":
    main()
