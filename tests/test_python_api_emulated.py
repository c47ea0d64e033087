"""`lanex.Cluster` against the API-server emulator and the real operator, for what the real control plane
cannot stage: trials with different results (a leaderboard that is not a tie) and a failed training."""

from __future__ import annotations

from typing import Any

import pytest

import lanex
from k8s.scenarios import experiment

pytestmark = pytest.mark.timeout(120)

SWEEP = {
    "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": "board"},
    "spec": {"template": {"dataset": {"synthetic": {"clips": 4}}, "training": {"workers": 1, "epochs": 2}},
             "parameters": [{"path": "learningRate", "values": [0.01, 0.02, 0.04]}], "parallelism": 3},
}


def connect(api_server: Any) -> lanex.Cluster:
    return lanex.Cluster(kubeconfig=str(api_server.kubeconfig), namespace="default")


def test_a_sweeps_leaderboard_ranks_its_trials_by_the_objective(api_server: Any, running_operator: Any) -> None:
    api_server.knobs.results_for.update({"board-000": {"accuracy": 0.91, "fp": 0.1, "fn": 0.1},
                                         "board-001": {"accuracy": 0.95, "fp": 0.1, "fn": 0.1},
                                         "board-002": {"accuracy": 0.93, "fp": 0.1, "fn": 0.1}})
    cluster = connect(api_server)
    assert cluster.submit(lanex.Sweep.from_dict(SWEEP)).created
    watched = list(cluster.watch_sweep("board", timeout=90))
    assert watched[-1].phase is lanex.SweepPhase.SUCCEEDED
    assert [r.phase for r in watched].count(lanex.SweepPhase.SUCCEEDED) == 1  # it ends at the end

    board = cluster.leaderboard("board")
    assert [(t.name, t.objective) for t in board] == [("board-001", 0.95), ("board-002", 0.93), ("board-000", 0.91)]
    assert [t.parameters for t in board] == [{"learningRate": 0.02}, {"learningRate": 0.04}, {"learningRate": 0.01}]
    assert cluster.get_sweep("board").best.name == "board-001"
    with pytest.raises(lanex.NotReached, match="lanesweep default/board is Succeeded, not Failed"):
        cluster.wait_sweep("board", "Failed", timeout=10)


def test_waiting_for_success_of_a_failed_experiment_says_why_it_failed(api_server: Any,
                                                                        running_operator: Any) -> None:
    api_server.knobs.fail_mpijobs["broken"] = "RuntimeError: CUDA out of memory (rank 2)"
    api_server.create(experiment("broken"))
    cluster = connect(api_server)
    with pytest.raises(lanex.NotReached) as ended:
        cluster.wait("broken", timeout=60)
    assert str(ended.value).startswith("laneexperiment default/broken is Failed, not Succeeded: TrainingFailed: "
                                       "MPIJob broken-train failed")
    assert "CUDA out of memory (rank 2)" in str(ended.value)
    assert ended.value.phase == "Failed" and ended.value.record.reason == "TrainingFailed"
