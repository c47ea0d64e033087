"""`lanex run` with `tracking.mlflow` against a REAL `mlflow server` that demands credentials (basic auth).

The credentials come only from `--secret NAME=env:VAR` (the stand-in for the cluster's Secret): the
`lanex` processes get no MLflow variables from the test's environment, so a run that reaches the server
got them through the Secret. They are shown nowhere (state, logs, output). An experiment's run carries
its result snapshot; `lanex get --workspace -o json` links to it under `mlflow`. A sweep is a parent run
with its trials' runs as children, ended with its best trial.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlflow_server import MlflowServerProcess

LANEX = str(Path(sys.executable).parent / "lanex")
PASSWORD = "lanex-test-admin-8d2f"
CREDENTIALS = f"MLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD={PASSWORD}\n"
TRAINING = {"backend": "torch", "backbone": "small", "workers": 1, "gpusPerWorker": 0, "batchSize": 2,
            "loaderWorkers": 0, "useWorkers": False, "validation": {"enabled": True, "batchSize": 4}, "epochs": 2,
            "height": 32, "width": 64, "largeShm": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = MlflowServerProcess(tmp_path_factory.mktemp("mlflow-auth"), admin_password=PASSWORD).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(server, monkeypatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    return MlflowClient(server.uri)


def lanex(*args: str, secret: bool = True) -> subprocess.CompletedProcess:
    """The real CLI, with no MLflow variable of this process: only `--secret` can give it credentials."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    if secret:
        env["TEAM_MLFLOW"] = CREDENTIALS
    return subprocess.run([LANEX, *args], env=env, capture_output=True, text=True, timeout=600)


def tracking(uri: str, experiment: str) -> dict:
    return {"mlflow": {"trackingUri": uri, "experimentName": experiment, "credentialsSecretRef": {"name": "team-mlflow"}}}


@pytest.mark.slow
def test_a_local_run_logs_with_the_secrets_credentials_tags_its_snapshot_and_lanex_get_links_to_it(
        server, client, tmp_path):
    file = tmp_path / "exp.yaml"
    file.write_text(yaml.safe_dump({"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
                                    "metadata": {"name": "tracked"},
                                    "spec": {"dataset": {"synthetic": {"clips": 4, "seed": 1}, "size": "1Gi"},
                                             "training": TRAINING, "tracking": tracking(server.uri, "local-lanes")}}))
    workspace = tmp_path / "ws"

    refused = lanex("run", str(file), "--workspace", str(workspace), secret=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: spec.tracking.mlflow.credentialsSecretRef names team-mlflow: pass --secret team-mlflow=file:PATH "
        "(or =env:VAR) with its keys MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD")

    done = lanex("run", str(file), "--workspace", str(workspace), "--secret", "team-mlflow=env:TEAM_MLFLOW")
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((workspace / "experiments" / "tracked" / "state.json").read_text())
    listed = json.loads(lanex("get", "--workspace", str(workspace), "-o", "json").stdout)["experiments"]
    link = listed[0]["mlflow"]
    run = client.get_run(link["runId"])
    assert link == {"runId": run.info.run_id, "experimentId": run.info.experiment_id,
                    "url": f"{server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"}
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert state["mlflow"] == link  # the record `lanex ui` reads
    assert run.data.tags["lanex.experiment"] == "local/tracked"
    assert run.data.tags["lanex.resultSnapshot"] == state["snapshots"][-1]
    assert run.data.tags["lanex.datasetSource"] == "synthetic:clips=4,seed=1"
    assert run.data.params["batch_size"] == "2"
    output = Path(state["outputDir"])
    steps = [json.loads(line)["step"] for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [metric.step for metric in client.get_metric_history(run.info.run_id, "loss")] == steps
    assert json.loads((output / "mlflow" / "cursor.json").read_text())["seq"] == \
        len((output / "mlflow" / "journal.jsonl").read_text().splitlines())  # nothing left to send

    shown = [done.stdout, done.stderr, json.dumps(state), json.dumps(listed)]
    shown += [path.read_text(errors="replace") for path in (workspace / "experiments" / "tracked").rglob("*")
              if path.is_file()]
    shown += [path.read_text(errors="replace") for path in (output / "mlflow").rglob("*") if path.is_file()]
    assert not [text for text in shown if PASSWORD in text]


@pytest.mark.slow
def test_a_local_sweep_is_a_parent_run_whose_children_are_its_trials_ended_with_the_best(server, client, tmp_path):
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({
        "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": "tracked-sweep"},
        "spec": {"template": {"dataset": {"synthetic": {"clips": 4, "seed": 1}, "size": "1Gi"},
                              "training": {**TRAINING, "epochs": 1}, "tracking": tracking(server.uri, "local-sweeps")},
                 "parameters": [{"path": "learningRate", "values": [0.01, 0.05]}]}}))
    workspace = tmp_path / "ws"
    done = lanex("run", str(file), "--workspace", str(workspace), "--parallel", "2",
                 "--secret", "team-mlflow=env:TEAM_MLFLOW")
    assert done.returncode == 0, done.stdout + done.stderr

    [sweep] = json.loads(lanex("get", "--workspace", str(workspace), "-o", "json").stdout)["sweeps"]
    parent = client.get_run(sweep["mlflow"]["runId"])
    assert parent.info.run_name == "tracked-sweep" and parent.info.status == "FINISHED"
    assert parent.data.tags["lanex.role"] == "sweep" and parent.data.tags["lanex.sweep"] == "local/tracked-sweep"
    assert parent.data.tags["lanex.bestTrial"] == sweep["bestTrial"]["name"]
    assert json.loads(parent.data.params["parameters"])[0]["values"] == [0.01, 0.05]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(run.info.run_name for run in children) == ["tracked-sweep-000", "tracked-sweep-001"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["lanex.sweep"] == "local/tracked-sweep" and run.data.tags["lanex.trial"] == run.info.run_name
        assert run.data.tags["lanex.datasetSnapshot"] == "tracked-sweep-dataset"
        assert float(run.data.params["lr"]) in (0.01, 0.05)
    assert PASSWORD not in done.stdout + done.stderr
