"""Benchmark: LaneSweeps through the whole simulated lifecycle (default 10 sweeps x 100 trials).

Runs the real operator (`python -m lanex_operator.controller.runtime`, a separate process) against the
emulated cluster of tests/k8s, creates the sweeps at once, waits for all to finish and reports:

* wall time, and the trials' outcomes;
* dataset preparation: prepare Jobs and dataset snapshots created per sweep (goal: exactly 1 each),
  restore claims per trial;
* API requests per trial (the operator's own client plus kopf's, watches excluded), with a breakdown,
  to compare with an experiment's (benchmarks/bench_operator.py; a trial is a LaneExperiment too);
* the operator process's peak memory (VmHWM; goal < 300 MiB);
* reaction times (goal p95 < 1 s): (a) a trial's steps, as bench_operator measures an experiment's (from
  a simulated controller's final status write on a child to the operator's next request for that trial);
  (b) the sweep's, end to end: from a trial's last child event (its result snapshot ready, written by
  the simulated snapshot controller) to the sweep's next status patch (which shows the trial finished);
* the most trials' MPIJobs training at once per sweep namespace (parallelism is per sweep).

    python benchmarks/bench_sweeps.py --sweeps 10 --trials 100 --parallelism 10
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
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_operator import percentile, reaction_times  # noqa: E402
from k8s.harness import EmulatedCluster  # noqa: E402
from k8s.operator_proc import OPERATOR_USER_AGENTS, OperatorProcess  # noqa: E402
from k8s.scenarios import experiment  # noqa: E402


def sweep_body(name: str, trials: int, parallelism: int) -> dict[str, Any]:
    learning_rates = [round(0.001 * (index + 1), 6) for index in range(trials)]
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": experiment("template")["spec"],
                     "parameters": [{"path": "learningRate", "values": learning_rates}],
                     "parallelism": parallelism}}


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 3), "p95": round(percentile(values, 0.95), 3),
            "max": round(max(values), 3)}


def sweep_reactions(calls: list[Any], sweeps: list[str]) -> list[float]:
    """Seconds from each trial's result snapshot becoming ready to the next status patch of its sweep."""
    sweep_patches = collections.defaultdict(list)
    ready: dict[str, float] = {}
    for call in calls:
        if call.user_agent.startswith("lanex-operator/") and call.resource == "lanesweeps/status" and call.name in sweeps:
            sweep_patches[call.name].append(call.at)
        elif (call.user_agent.startswith("lanex-cluster-sim") and call.resource == "volumesnapshots/status"
              and call.name and not call.name.endswith("-dataset")):
            ready[call.name.rsplit("-", 1)[0]] = call.at  # <sweep>-NNN-<time> -> <sweep>-NNN
    reactions = []
    for trial, at in ready.items():
        after = [t for t in sweep_patches.get(trial.rsplit("-", 1)[0], []) if t > at]
        if after:
            reactions.append(after[0] - at)
    return reactions


def run(sweeps: int, trials: int, parallelism: int, timeout: float) -> dict[str, Any]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-sweeps-"))
    names = [f"bs{i:02d}" for i in range(sweeps)]
    trial_names = [f"{name}-{index:03d}" for name in names for index in range(trials)]
    with EmulatedCluster(workdir, namespaces=("default",)) as cluster:
        settings = {"LANEX_OPERATOR_RESYNC_SECONDS": "5", "LANEX_OPERATOR_PREFLIGHT_CACHE_SECONDS": "10"}
        operator = OperatorProcess(cluster.kubeconfig, workdir, settings).start()
        try:
            baseline = len(cluster.calls())
            started = time.monotonic()
            for name in names:
                cluster.create(sweep_body(name, trials, parallelism))
            pending = set(names)
            while pending and time.monotonic() - started < timeout:
                try:
                    for item in cluster.list("lanesweeps", "default"):
                        if (item.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                            pending.discard(item["metadata"]["name"])
                except TimeoutError:  # the emulator's loop is saturated: ask again, it is only the poll
                    pass
                time.sleep(2.0)
            wall = time.monotonic() - started
            peak_kib = operator.peak_rss_kib()
            operator_cpu = operator.cpu_seconds()
        finally:
            operator.stop()
        calls = cluster.calls()[baseline:]
        sweep_phases = collections.Counter((s.get("status") or {}).get("phase") for s in cluster.list("lanesweeps", "default"))
        trial_phases = collections.Counter((t.get("status") or {}).get("phase") for t in cluster.list("laneexperiments", "default"))
        jobs = cluster.list("jobs", "default")
        snapshots = cluster.list("volumesnapshots", "default")
        claims = cluster.list("persistentvolumeclaims", "default")
        peak_training = (cluster.sim.mpijobs_running_peak.get("default", 0) if cluster.sim else 0)
    own = [c for c in calls if c.user_agent.startswith(OPERATOR_USER_AGENTS) and c.verb != "watch"]
    breakdown = collections.Counter(f"{c.user_agent.split('/')[0]} {c.verb} {c.resource}" for c in own)
    prepare_jobs = collections.Counter(j["metadata"]["name"].rsplit("-dataset-prepare", 1)[0] for j in jobs)
    dataset_snapshots = collections.Counter(s["metadata"]["name"].rsplit("-dataset", 1)[0] for s in snapshots
                                            if s["metadata"]["name"].endswith("-dataset"))
    restores = sum(1 for c in claims if ((c.get("spec") or {}).get("dataSource") or {}).get("name", "").endswith("-dataset"))
    trial_steps = reaction_times(calls, trial_names)
    all_steps = [v for values in trial_steps.values() for v in values]
    return {
        "sweeps": sweeps, "trials_per_sweep": trials, "parallelism_per_sweep": parallelism,
        "sweep_phases": dict(sweep_phases), "trial_phases": dict(trial_phases), "unfinished_sweeps": len(pending),
        "wall_seconds": round(wall, 1),
        "prepare_jobs_per_sweep": sorted(set(prepare_jobs[name] for name in names)),
        "dataset_snapshots_per_sweep": sorted(set(dataset_snapshots[name] for name in names)),
        "restore_claims": restores,
        "most_mpijobs_training_at_once": peak_training,
        "operator_requests_per_trial": round(len(own) / len(trial_names), 1),
        "operator_requests_breakdown_per_trial": {k: round(v / len(trial_names), 2) for k, v in sorted(breakdown.items())},
        "operator_peak_rss_mib": round(peak_kib / 1024, 1),
        "operator_cpu_seconds": round(operator_cpu, 1),
        "reaction_seconds_trial_steps": summary(all_steps),
        "reaction_seconds_trial_steps_by_step": {step: summary(values) for step, values in trial_steps.items()},
        "reaction_seconds_sweep_to_trial_end": summary(sweep_reactions(calls, names)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=10, help="LaneSweeps created at once.")
    parser.add_argument("--trials", type=int, default=100, help="Trials per sweep (a grid of learning rates).")
    parser.add_argument("--parallelism", type=int, default=10, help="Trials unfinished at once, per sweep.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Give up after this many seconds.")
    args = parser.parse_args()
    report = run(args.sweeps, args.trials, args.parallelism, args.timeout)
    print(json.dumps(report, indent=2))
    if report["unfinished_sweeps"]:
        raise SystemExit(f"{report['unfinished_sweeps']} sweeps did not finish within {args.timeout}s")


if __name__ == "__main__":
    main()
