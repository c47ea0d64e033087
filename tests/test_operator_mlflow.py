"""MLflow tracking through the real operator on the emulated cluster.

An experiment's launcher gets LANEX_MLFLOW (server, experiment, run name, tags) and the credentials
Secret's keys by reference only: the token the test put in the Secret appears in no child, status or
Event, and the operator reads the Secret's metadata only. A Secret its owner did not opt in stops the
experiment at Preflight, naming the field and the label. A sweep's parent run is made by its Job,
which the simulated kubelet runs for real (`lanex mlflow sweep-run`) against a real `mlflow server`:
status.mlflow is that run, trials made afterwards carry its id down to their launcher's environment,
and at the end a second Job ends the parent run and adopts the trial runs left without it.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from mlflow.tracking import MlflowClient

from k8s.scenarios import child_counts, condition, experiment, experiment_events, get_experiment, wait_phase
from mlflow_server import MlflowServerProcess

pytestmark = pytest.mark.timeout(240)

TOKEN = "mlflow-token-7c1e55"
OPT_IN = {"lanex.dev/usable-by-experiments": "true"}
NO_CHILDREN = {"persistentvolumeclaims": 0, "jobs": 0, "mpijobs": 0, "volumesnapshots": 0}
CREDENTIAL_KEYS = ["MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]


def _secret(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "default", **({"labels": labels} if labels else {})},
            "data": {"MLFLOW_TRACKING_TOKEN": base64.b64encode(TOKEN.encode()).decode()}}


def _tracking(uri: str = "http://mlflow.mlflow.svc:5000", secret: str | None = "mlflow-token") -> dict:
    mlflow = {"trackingUri": uri, "experimentName": "lanes"}
    if secret:
        mlflow["credentialsSecretRef"] = {"name": secret}
    return {"tracking": {"mlflow": mlflow}}


def _launcher(mpijob: dict) -> dict:
    return mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env") or []}


def _secret_reads(api_server) -> list:
    return [call for call in api_server.calls()
            if call.resource == "secrets" and call.user_agent.startswith("lanex-operator/")]


def test_the_mlflow_credentials_reach_the_launcher_by_reference_only_and_are_shown_nowhere(api_server,
                                                                                          running_operator):
    api_server.create(_secret("mlflow-token", OPT_IN))
    api_server.create(experiment("tracked", spec=_tracking()))
    exp = wait_phase(api_server, "tracked", ["Succeeded", "Failed"], timeout=60)
    assert exp["status"]["phase"] == "Succeeded", exp["status"]

    [mpijob] = api_server.list("mpijobs", "default", label_selector="lanex.dev/experiment=tracked")
    env = _env(_launcher(mpijob))
    for key in CREDENTIAL_KEYS:
        assert env[key] == {"secretKeyRef": {"name": "mlflow-token", "key": key, "optional": True}}
    settings = json.loads(env["LANEX_MLFLOW"])
    assert settings == {
        "tracking_uri": "http://mlflow.mlflow.svc:5000", "experiment_name": "lanes", "log_best_checkpoint": False,
        "run_name": "tracked", "tags": {
            "lanex.experiment": "default/tracked", "lanex.image": settings["tags"]["lanex.image"],
            "lanex.configHash": exp["status"]["provenance"]["configHash"],
            "lanex.datasetSource": "synthetic:clips=4,seed=7"}}
    assert settings["tags"]["lanex.image"] == exp["status"]["provenance"]["trainerImage"]
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert not set(_env(worker)) & {"LANEX_MLFLOW", *CREDENTIAL_KEYS}  # rank 0 gets them from the launcher

    everything = json.dumps([exp, api_server.list("mpijobs", "default"), api_server.list("jobs", "default"),
                             experiment_events(api_server, "tracked")])
    assert TOKEN not in everything
    reads = _secret_reads(api_server)
    assert {call.name for call in reads} == {"mlflow-token"}
    assert all(call.verb == "get" and call.metadata_only for call in reads), reads


def test_a_credentials_secret_not_opted_in_stops_the_experiment_at_preflight_naming_field_and_label(
        api_server, running_operator):
    api_server.create(_secret("team-token"))  # another team's: not opted in
    api_server.create(experiment("borrower", spec=_tracking(secret="team-token")))

    def preflight() -> dict | None:
        conditions = (get_experiment(api_server, "borrower").get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Preflight" and c["status"] == "False"), None)

    shown = api_server.wait_for(preflight, message="Preflight False")
    assert shown["reason"] == "SecretNotOptedIn"
    assert shown["message"].startswith(
        'Secret "team-token" (spec.tracking.mlflow.credentialsSecretRef) in namespace "default" is not usable by '
        'experiments: its owner opts it in with the label lanex.dev/usable-by-experiments: "true" (kubectl label '
        'secret team-token -n default lanex.dev/usable-by-experiments=true)'), shown["message"]
    assert child_counts(api_server, "borrower") == NO_CHILDREN
    assert TOKEN not in json.dumps([get_experiment(api_server, "borrower"), experiment_events(api_server, "borrower")])


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServerProcess(tmp_path / "mlflow").start()
    try:
        yield server
    finally:
        server.stop()


def _sweep(uri: str) -> dict:
    template = {"dataset": {"synthetic": {"clips": 4, "seed": 7}},
                "training": {"workers": 1, "epochs": 2, "backbone": "small"}, **_tracking(uri)}
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": "tracked", "namespace": "default"},
            "spec": {"template": template, "parameters": [{"path": "learningRate", "values": [0.01, 0.02]}]}}


def test_a_tracked_sweep_is_an_mlflow_parent_run_made_by_its_job_with_the_trials_as_children(
        api_server, operator_factory, mlflow_server):
    knobs = api_server.knobs
    knobs.real_job_components.add("mlflow")  # the kubelet runs `lanex mlflow sweep-run` against the real server
    knobs.paused.add("Job/tracked-dataset-prepare")  # no trial before the parent run is known
    api_server.create(_secret("mlflow-token", OPT_IN))
    operator_factory()
    api_server.create(_sweep(mlflow_server.uri))

    def sweep() -> dict:
        return api_server.get("lanesweeps", "tracked", "default") or {}

    api_server.wait_for(lambda: (sweep().get("status") or {}).get("mlflow"), timeout=120,
                        message=f"status.mlflow (status: {sweep().get('status')})")
    link = sweep()["status"]["mlflow"]
    client = MlflowClient(mlflow_server.uri)
    parent = client.get_run(link["runId"])
    uid = sweep()["metadata"]["uid"]
    assert parent.data.tags["lanex.role"] == "sweep" and parent.data.tags["lanex.sweepUid"] == uid
    assert parent.data.tags["lanex.sweep"] == "default/tracked" and parent.info.run_name == "tracked"
    assert json.loads(parent.data.params["parameters"]) == [
        {"path": "learningRate", "values": [0.01, 0.02], "scale": "linear", "type": "float"}]
    assert link["url"] == f"{mlflow_server.uri}/#/experiments/{parent.info.experiment_id}/runs/{link['runId']}"
    assert condition(sweep(), "MLflowParentRun")["status"] == "True"
    [job] = api_server.list("jobs", "default", label_selector="app.kubernetes.io/component=mlflow")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert _env(container)["MLFLOW_TRACKING_TOKEN"] == {
        "secretKeyRef": {"name": "mlflow-token", "key": "MLFLOW_TRACKING_TOKEN", "optional": True}}

    # A trial run the parent does not know yet (as a trainer that started before the parent existed logs it).
    orphan = client.create_run(parent.info.experiment_id, run_name="tracked-000",
                               tags={"lanex.sweepUid": uid, "lanex.trial": "tracked-000"}).info.run_id

    knobs.paused.discard("Job/tracked-dataset-prepare")
    api_server.wait_for(lambda: (sweep().get("status") or {}).get("phase") in ("Succeeded", "Failed"), timeout=120,
                        message="the sweep to end")
    assert sweep()["status"]["phase"] == "Succeeded", sweep()["status"]
    for trial in ("tracked-000", "tracked-001"):
        assert get_experiment(api_server, trial)["metadata"]["annotations"]["lanex.dev/mlflow-parent-run-id"] == \
            link["runId"]
        [mpijob] = api_server.list("mpijobs", "default", label_selector=f"lanex.dev/experiment={trial}")
        settings = json.loads(_env(_launcher(mpijob))["LANEX_MLFLOW"])
        assert settings["parent_run_id"] == link["runId"] and settings["sweep_uid"] == uid
        assert settings["tags"]["lanex.sweep"] == "default/tracked" and settings["tags"]["lanex.trial"] == trial
        assert settings["tags"]["lanex.datasetSnapshot"] == "tracked-dataset"

    deadline = time.monotonic() + 120
    while client.get_run(link["runId"]).info.status != "FINISHED":
        assert time.monotonic() < deadline, "the parent run was not ended"
        time.sleep(0.2)
    ended = client.get_run(link["runId"])
    assert ended.data.tags["lanex.bestTrial"] == sweep()["status"]["bestTrial"]["name"]
    assert ended.data.tags["lanex.phase"] == "Succeeded"
    assert client.get_run(orphan).data.tags["mlflow.parentRunId"] == link["runId"]
    assert TOKEN not in json.dumps([sweep(), api_server.list("jobs", "default"),
                                    api_server.list("events", "default", api_version="v1")])
