"""`lanex.Cluster` on the real control plane (chart installed by the real helm, the operator as its
ServiceAccount, upstream controllers moving every child; the launcher's log is a recording of a real
local run, k8s/recorded_launcher.py): submit, watch, wait, results, logs, delete, and the same for a
sweep with its leaderboard. Run under `flock /tmp/lanex-cluster.lock` (one control plane per machine).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import lanex

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "python-api"
RUN_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def on_cluster(lanex_on_cluster: Any) -> Any:
    lanex_on_cluster.cluster.ensure_namespace(NAMESPACE)
    return lanex_on_cluster


@pytest.fixture(scope="module")
def cluster(on_cluster: Any) -> lanex.Cluster:
    return lanex.Cluster(kubeconfig=str(on_cluster.cluster.kubeconfig), namespace=NAMESPACE)


def quickstart(name: str) -> lanex.Experiment:
    exp = lanex.Experiment.from_file(ROOT / "examples" / "quickstart.yaml")
    exp.name = name
    return exp


LIFECYCLE = [p for p in lanex.Phase if p not in (lanex.Phase.FAILED, lanex.Phase.STOPPED)]


def test_an_experiment_is_submitted_watched_waited_for_read_and_deleted(on_cluster, cluster):
    exp = quickstart("api-run")
    submitted = cluster.submit(exp)
    assert submitted.created and submitted.record.name == "api-run" and submitted.record.namespace == NAMESPACE
    assert cluster.submit(exp).created is False  # the same spec again: left alone

    seen = list(cluster.watch("api-run", timeout=RUN_TIMEOUT_S))  # ends by itself once it has finished
    phases = [r.phase for r in seen]
    assert phases[-1] is lanex.Phase.SUCCEEDED, on_cluster.scene(NAMESPACE)
    distinct = list(dict.fromkeys(p for p in phases if p is not None))
    assert len(distinct) >= 3 and distinct == sorted(distinct, key=LIFECYCLE.index)  # each change, in order
    assert lanex.Phase.TRAINING in distinct
    assert any(r.progress is not None for r in seen)  # progress came through the watch as it was published
    assert len({(r.phase, r.progress and r.progress.advance_key()) for r in seen}) == len(seen)  # changes only

    done = cluster.wait("api-run", "succeeded", timeout=30)
    recorded = on_cluster.recorded_results
    assert done.results.accuracy == pytest.approx(recorded["accuracy"])
    assert done.snapshot and done.snapshot == done.status.provenance.result_snapshot
    assert cluster.get("api-run").document["metadata"]["uid"] == done.document["metadata"]["uid"]
    assert [r.name for r in cluster.list()] == ["api-run"]

    results = cluster.results("api-run")
    assert (results.accuracy, results.fp, results.fn) == pytest.approx(
        (recorded["accuracy"], recorded["fp"], recorded["fn"]))
    assert [v.epoch for v in results.validation] == [1, 2]  # the recording's two validated epochs
    assert results.curves == "/mnt/experiments/api-run/curves.png"

    log = "".join(cluster.logs("api-run"))
    last = [line for line in log.splitlines() if line.startswith("{") and line.endswith("}")][-1]
    assert json.loads(last)["accuracy"] == pytest.approx(recorded["accuracy"])
    assert "LANEX_PROGRESS {" in log

    changed = exp.copy().set("training.workers", 3)
    with pytest.raises(lanex.ClusterError, match=r"already exists with a different spec \(spec.training.workers\)"):
        cluster.submit(changed)
    with pytest.raises(lanex.NotReached, match=f"laneexperiment {NAMESPACE}/api-run is Succeeded, not Failed") as ended:
        cluster.wait("api-run", lanex.Phase.FAILED, timeout=30)
    assert ended.value.phase == "Succeeded"

    deletion = cluster.delete("api-run", wait=True, timeout=60)
    assert deletion.gone and any(done.snapshot in kept for kept in deletion.keeps)  # retention keeps snapshots
    assert "MPIJob api-run-train" in deletion.removes
    assert deletion.operator_message  # the operator's Deleted Event: what its finalizer did
    with pytest.raises(lanex.ClusterError, match=f"laneexperiment {NAMESPACE}/api-run not found") as missing:
        cluster.get("api-run")
    assert missing.value.not_found


def test_a_wait_is_bounded_by_its_timeout_and_says_where_it_stood(cluster):
    cluster.submit(quickstart("api-slow"))
    started = time.monotonic()
    with pytest.raises(lanex.WaitTimeout, match=rf"timed out after 1s waiting for laneexperiment {NAMESPACE}/api-slow "
                                                r"to be Succeeded \(phase: "):
        cluster.wait("api-slow", timeout=1)
    assert time.monotonic() - started < 10
    with pytest.raises(lanex.InvalidSpecError, match="phase: 'Finished' is not one of"):
        cluster.wait("api-slow", "Finished")
    with pytest.raises(lanex.WaitTimeout):
        list(cluster.watch("api-slow", timeout=0.5))
    cluster.delete("api-slow", wait=True, timeout=RUN_TIMEOUT_S)


def test_a_sweep_is_submitted_waited_for_ranked_compared_and_deleted(cluster):
    template = quickstart("unused").spec_document()
    template["training"]["epochs"] = 2
    sweep = lanex.Sweep.from_dict({
        "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": "api-sweep"},
        "spec": {"template": template, "parameters": [{"path": "learningRate", "values": [0.01, 0.02]}],
                 "parallelism": 2}})
    assert cluster.submit(sweep).created
    watched = list(cluster.watch_sweep("api-sweep", timeout=300))  # ends by itself once the sweep has finished
    assert watched[-1].phase is lanex.SweepPhase.SUCCEEDED
    assert lanex.SweepPhase.RUNNING in [r.phase for r in watched]
    assert any(t.phase == "Succeeded" for t in watched[-1].trials)
    done = cluster.wait_sweep("api-sweep", timeout=30)
    assert done.phase is lanex.SweepPhase.SUCCEEDED and done.counts.succeeded == 2
    board = cluster.leaderboard("api-sweep")
    assert [t.name for t in board] == ["api-sweep-000", "api-sweep-001"]  # the same recording: ties keep trial order
    assert board[0].name == done.best.name and board[0].objective == done.best.objective
    assert [t.name for t in cluster.trials("api-sweep")] == ["api-sweep-000", "api-sweep-001"]
    runs = cluster.compare(["api-sweep"])
    assert [r.parameters for r in runs] == [{"learningRate": 0.01}, {"learningRate": 0.02}]
    assert all(r.history for r in runs)

    deletion = cluster.delete_sweep("api-sweep", wait=True, timeout=RUN_TIMEOUT_S)
    assert deletion.gone and deletion.removes[0].startswith("2 trial(s)")
    assert cluster.find_sweep("api-sweep") is None
