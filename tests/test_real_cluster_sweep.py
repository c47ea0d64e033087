"""A LaneSweep end to end on the real control plane: one prepare Job and one dataset snapshot for
six trials, each trial's claim restored from that snapshot by the real CSI provisioner, at most two
trials unfinished at once."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def lanex(lanex_on_cluster: Any) -> Any:
    return lanex_on_cluster


def sweep(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"dataset": {"synthetic": {"clips": 8, "seed": 0}, "size": "1Gi"},
                                  "training": {"backend": "torch", "backbone": "small", "workers": 2,
                                               "gpusPerWorker": 1, "epochs": 2, "height": 144, "width": 400,
                                               "largeShm": False},
                                  "snapshot": {"enabled": True}},
                     "parameters": [{"path": "learningRate", "values": [0.01, 0.02, 0.04]},
                                    {"path": "batchSize", "values": [4, 8]}],
                     "parallelism": 2}}


def test_six_trials_two_at_a_time_share_one_prepared_dataset_snapshot(lanex):
    cluster, namespace, name = lanex.cluster, "sweeps", "sw"
    lanex.apply(sweep(name, namespace))
    # Never more than `parallelism` trials unfinished at once, sampled while the sweep runs.
    peak_unfinished = 0

    def finished() -> bool:
        nonlocal peak_unfinished
        trials = cluster.get("lx", "-n", namespace, "-l", f"lanex.dev/sweep={name}")["items"]
        unfinished = [t for t in trials if (t.get("status") or {}).get("phase") not in ("Succeeded", "Failed", "Stopped")]
        peak_unfinished = max(peak_unfinished, len(unfinished))
        return (cluster.get("lxs", name, "-n", namespace).get("status") or {}).get("phase") in ("Succeeded", "Failed")

    lanex.wait_for("the sweep to finish", finished, timeout=300, namespace=namespace)
    done = cluster.get("lxs", name, "-n", namespace)
    status = done["status"]
    assert status["counts"]["succeeded"] == 6, status["counts"]

    prepares = [j["metadata"]["name"] for j in cluster.get("jobs", "-n", namespace)["items"]
                if j["metadata"]["name"].endswith("-prepare")]
    assert prepares == [f"{name}-dataset-prepare"]
    dataset_snapshot = status["datasetSnapshot"]
    claims = {c["metadata"]["name"]: c for c in cluster.get("pvc", "-n", namespace)["items"]}
    trials = [f"{name}-{i:03d}" for i in range(6)]
    for trial in trials:
        source = claims[f"{trial}-data"]["spec"].get("dataSource") or {}
        assert (source.get("kind"), source.get("name")) == ("VolumeSnapshot", dataset_snapshot), trial
        assert claims[f"{trial}-data"]["status"]["phase"] == "Bound"
    assert status["bestTrial"]["name"] in trials

    assert peak_unfinished <= 2, peak_unfinished


def test_the_sweep_example_runs_from_kubectl_apply_to_succeeded(lanex):
    import pathlib

    import yaml

    example = yaml.safe_load((pathlib.Path(__file__).resolve().parents[1] / "examples" / "sweep-quickstart.yaml").read_text())
    example["metadata"]["namespace"] = "sweep-example"
    lanex.apply(example)
    done = lanex.wait_phase("lxs", example["metadata"]["name"], "sweep-example", timeout=300)
    trials = len(example["spec"]["parameters"][0]["values"])
    assert done["status"]["counts"]["succeeded"] + done["status"]["counts"]["stopped"] == trials, done["status"]
    columns = lanex.cluster.kubectl("get", "lxs", "-n", "sweep-example").stdout.splitlines()
    assert columns[1].split()[:2] == [example["metadata"]["name"], "Succeeded"], columns
