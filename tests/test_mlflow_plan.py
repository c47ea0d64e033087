"""MLflow tracking in the plan and the builders, without a cluster: what reaches `lanex train` (LANEX_MLFLOW on
the launcher, the credentials by Secret reference only, passed on to remote ranks by name), what a trial's
metadata adds (its sweep and parent run), the sweep's Job, and the trainer's side of LANEX_MLFLOW."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from lanex_operator.api import parse_spec
from lanex_operator.api.sweep import MLFLOW_PARENT_ANNOTATION, SWEEP_LABEL, parse_sweep_spec
from lanex_operator.controller.builders import mpijob_for, sweep_mlflow_job_for
from lanex_operator.plan.steps import TrackingContext, plan_for
from lanex_operator.plan.sweep import mlflow_sweep_run, tracking_context
from lanex_trainer.config import ConfigError, build_config
from lanex_trainer.launch import plan_launch

TRACKED = {"dataset": {"fromSnapshot": {"snapshotName": "lanes-dataset"}},
           "training": {"image": "registry.example.com/lanex/trainer:1.2", "workers": 2},
           "tracking": {"mlflow": {"trackingUri": "https://mlflow.example.com", "experimentName": "team/lanes",
                                   "credentialsSecretRef": {"name": "mlflow-token"}, "logBestCheckpoint": True}}}
KEYS = ["MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]


def _env(container: dict) -> dict:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env") or []}


def test_a_tracked_experiments_launcher_gets_lanex_mlflow_and_the_secret_keys_by_reference():
    spec = parse_spec(TRACKED)
    plan = plan_for("exp-7", "team-a", spec)
    settings = json.loads(plan.train.launcher.env_dict()["LANEX_MLFLOW"])
    assert settings == {
        "tracking_uri": "https://mlflow.example.com", "experiment_name": "team/lanes", "log_best_checkpoint": True,
        "run_name": "exp-7",
        "tags": {"lanex.experiment": "team-a/exp-7", "lanex.image": "registry.example.com/lanex/trainer:1.2",
                 "lanex.configHash": plan.config_hash, "lanex.datasetSource": "fromSnapshot:lanes-dataset",
                 "lanex.datasetSnapshot": "lanes-dataset"}}
    assert "LANEX_MLFLOW" not in plan.train.worker.env_dict()

    mpijob = mpijob_for({"name": "exp-7", "namespace": "team-a"}, spec, plan)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "launcher"},
           "spec": mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]}
    assert kubernetes_validate.validate(pod, "1.30", strict=True) == "1.30"
    launcher = pod["spec"]["containers"][0]
    env = _env(launcher)
    assert {key: env[key] for key in KEYS} == {
        key: {"secretKeyRef": {"name": "mlflow-token", "key": key, "optional": True}} for key in KEYS}
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert not set(_env(worker)) & {"LANEX_MLFLOW", *KEYS}


def test_without_tracking_nothing_of_mlflow_is_planned():
    plan = plan_for("exp-7", "team-a", parse_spec({"dataset": {"synthetic": {}}}))
    assert "LANEX_MLFLOW" not in plan.train.launcher.env_dict() and plan.train.launcher.secret_env == ()


def test_a_trials_metadata_gives_its_run_the_sweep_its_uid_and_the_parent_run():
    meta = {"name": "lr-001", "namespace": "team-a", "labels": {SWEEP_LABEL: "lr"},
            "annotations": {MLFLOW_PARENT_ANNOTATION: "0f3a9c"},
            "ownerReferences": [{"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "name": "lr", "uid": "u-42"}]}
    context = tracking_context(meta)
    assert context == TrackingContext(sweep="lr", sweep_uid="u-42", parent_run_id="0f3a9c")
    settings = json.loads(plan_for("lr-001", "team-a", parse_spec(TRACKED), context=context)
                          .train.launcher.env_dict()["LANEX_MLFLOW"])
    assert (settings["parent_run_id"], settings["sweep_uid"]) == ("0f3a9c", "u-42")
    assert settings["tags"]["lanex.sweep"] == "team-a/lr" and settings["tags"]["lanex.trial"] == "lr-001"
    assert settings["tags"]["lanex.sweepUid"] == "u-42"
    assert tracking_context({"name": "solo", "labels": {}}) == TrackingContext()


def test_the_sweeps_mlflow_job_runs_sweep_run_with_the_credentials_by_reference():
    spec = parse_sweep_spec({"template": TRACKED, "parameters": [{"path": "learningRate", "values": [0.01, 0.1]}]})
    run = mlflow_sweep_run("team-a", "lr", "u-42", spec, "registry.example.com/lanex/trainer:1.2", "IfNotPresent")
    job = sweep_mlflow_job_for({"name": "lr", "namespace": "team-a"}, "lr-mlflow", run)
    assert kubernetes_validate.validate(job, "1.30", strict=True) == "1.30"
    assert job["metadata"]["labels"][SWEEP_LABEL] == "lr" and job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:3] == ["lanex", "mlflow", "sweep-run"] and "--end" not in command
    option = {command[i]: command[i + 1] for i in range(3, len(command) - 1, 2)}
    assert option["--sweep"] == "team-a/lr" and option["--sweep-uid"] == "u-42"
    assert option["--termination-log"] == "/dev/termination-log"
    assert json.loads(option["--params"])["parameters"][0]["values"] == [0.01, 0.1]
    assert _env(container) == {key: {"secretKeyRef": {"name": "mlflow-token", "key": key, "optional": True}}
                               for key in KEYS}
    ended = mlflow_sweep_run("team-a", "lr", "u-42", spec, "img", "IfNotPresent", end="FINISHED",
                             tags={"lanex.bestTrial": "lr-001"})
    assert ended.command[-2:] == ("--end", "FINISHED")
    assert json.loads(ended.command[ended.command.index("--tags") + 1])["lanex.bestTrial"] == "lr-001"


def test_mpirun_passes_the_credentials_on_to_remote_ranks_by_name_only(tmp_path: Path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("exp-train-worker-0 slots=1\nexp-train-worker-1 slots=1\n")
    plan = plan_launch(["lanex", "train"], "torch", environ={
        "LANEX_MPI_HOSTFILE": str(hostfile), "MLFLOW_TRACKING_TOKEN": "s3cret", "LANEX_MLFLOW": "{}"})
    for name in ("MLFLOW_TRACKING_TOKEN", "LANEX_MLFLOW"):
        assert plan.argv[plan.argv.index(name) - 1] == "-x"
    assert "s3cret" not in " ".join(plan.argv)


def test_lanex_train_reads_lanex_mlflow_and_keeps_it_out_of_the_config_fingerprint(tmp_path: Path):
    base = {"data_root": tmp_path, "output_dir": tmp_path / "out"}
    value = json.dumps({"tracking_uri": "http://127.0.0.1:5000", "experiment_name": "lanes", "tags": {"a": "b"}})
    tracked = build_config(environ={"LANEX_MLFLOW": value}, overrides=base)
    assert tracked.mlflow.experiment_name == "lanes" and tracked.mlflow.tags == {"a": "b"}
    assert tracked.fingerprint() == build_config(environ={}, overrides=base).fingerprint()
    assert "mlflow" not in tracked.model_dump()
    with pytest.raises(ConfigError, match="environment variable LANEX_MLFLOW: not a JSON object"):
        build_config(environ={"LANEX_MLFLOW": "{"}, overrides=base)
