"""Every step can fail: the experiment ends Failed with the step's reason and message, and nothing after it runs.

Also: a missing dependency is a Preflight condition (not a crash loop), and invalid specs that
bypass the CRD schema end in Failed/InvalidSpec naming the field, with no child and no retry loop.
"""

from __future__ import annotations

import time

import pytest

from k8s.emulator import FaultPlan
from k8s.scenarios import child_counts, condition, experiment, experiment_events, get_experiment, phase_of, wait_phase

pytestmark = pytest.mark.timeout(60)

NO_CHILDREN = {"persistentvolumeclaims": 0, "jobs": 0, "mpijobs": 0, "volumesnapshots": 0}


def failed(api_server, name: str, namespace: str = "default") -> dict:
    exp = wait_phase(api_server, name, ["Succeeded", "Failed"], namespace=namespace)
    assert exp["status"]["phase"] == "Failed", exp["status"]
    assert condition(exp, "Failed")["status"] == "True"
    assert condition(exp, "Succeeded")["status"] == "False"
    assert exp["status"]["completionTime"]
    return exp


def warning_reasons(api_server, name: str) -> list[str]:
    return [e["reason"] for e in experiment_events(api_server, name) if e["type"] == "Warning"]


def test_dataset_volume_never_bound_fails_with_the_provisioner_warning(api_server, operator_factory):
    api_server.knobs.fail_binding["lanes-nobind"] = "ANF capacity pool premium-pool has no space left"
    operator_factory({"LANEX_OPERATOR_DATASET_BOUND_TIMEOUT_SECONDS": "1.5"})
    api_server.create(experiment("lanes-nobind"))
    exp = failed(api_server, "lanes-nobind")
    assert exp["status"]["reason"] == "DatasetFailed"
    assert "PersistentVolumeClaim lanes-nobind-data was not bound after" in exp["status"]["message"]
    assert "ProvisioningFailed: ANF capacity pool premium-pool has no space left" in exp["status"]["message"]
    assert condition(exp, "DatasetReady")["status"] == "False"
    assert child_counts(api_server, "lanes-nobind") == {**NO_CHILDREN, "persistentvolumeclaims": 1}
    api_server.wait_for(lambda: "DatasetFailed" in warning_reasons(api_server, "lanes-nobind"))


def test_failed_download_job_fails_with_the_pod_termination_message(api_server, running_operator):
    api_server.knobs.fail_jobs["lanes-nodata"] = "sha256 mismatch for https://example.org/train_set.zip"
    api_server.create(experiment("lanes-nodata"))
    exp = failed(api_server, "lanes-nodata")
    assert exp["status"]["reason"] == "DownloadFailed"
    message = exp["status"]["message"]
    assert "Job lanes-nodata-prepare failed (BackoffLimitExceeded: Job has reached the specified backoff limit)" in message
    assert "sha256 mismatch for https://example.org/train_set.zip" in message
    assert condition(exp, "DataPrepared")["status"] == "False"
    assert child_counts(api_server, "lanes-nodata") == {**NO_CHILDREN, "persistentvolumeclaims": 1, "jobs": 1}


def test_failed_training_fails_with_the_launcher_message_and_takes_no_snapshot(api_server, running_operator):
    api_server.knobs.fail_mpijobs["lanes-notrain"] = "RuntimeError: CUDA out of memory (rank 2)"
    api_server.create(experiment("lanes-notrain"))
    exp = failed(api_server, "lanes-notrain")
    assert exp["status"]["reason"] == "TrainingFailed"
    assert "MPIJob lanes-notrain-train failed (MPIJobFailed:" in exp["status"]["message"]
    assert "RuntimeError: CUDA out of memory (rank 2)" in exp["status"]["message"]
    assert condition(exp, "Trained")["status"] == "False"
    assert "results" not in exp["status"]
    assert child_counts(api_server, "lanes-notrain") == {**NO_CHILDREN, "persistentvolumeclaims": 1, "jobs": 1,
                                                         "mpijobs": 1}


def test_failed_training_with_snapshot_on_failure_keeps_the_logs_in_a_snapshot(api_server, running_operator):
    api_server.knobs.fail_mpijobs["lanes-keeplogs"] = "loss is NaN at epoch 3"
    api_server.create(experiment("lanes-keeplogs", spec={"snapshot": {"onFailure": True}}))
    exp = failed(api_server, "lanes-keeplogs")
    assert exp["status"]["reason"] == "TrainingFailed"
    assert "loss is NaN at epoch 3" in exp["status"]["message"]
    assert condition(exp, "Snapshotted")["status"] == "True"
    assert exp["status"]["snapshots"][0]["readyToUse"] is True
    assert child_counts(api_server, "lanes-keeplogs")["volumesnapshots"] == 1


def test_snapshot_error_is_surfaced_and_fails_after_the_ready_timeout(api_server, running_operator):
    api_server.knobs.fail_snapshots["lanes-nosnap"] = "ANF volume lanes has reached 255 snapshots"
    api_server.create(experiment("lanes-nosnap", spec={"snapshot": {"readyTimeoutSeconds": 2}}))
    api_server.wait_for(lambda: (condition(get_experiment(api_server, "lanes-nosnap"), "Snapshotted")
                                 if phase_of(api_server, "lanes-nosnap") == "Snapshotting" else {}
                                 ).get("reason") == "SnapshotError", message="the snapshot error in the condition")
    waiting = condition(get_experiment(api_server, "lanes-nosnap"), "Snapshotted")
    assert waiting["status"] == "Unknown"
    assert "ANF volume lanes has reached 255 snapshots" in waiting["message"]
    exp = failed(api_server, "lanes-nosnap")
    assert exp["status"]["reason"] == "SnapshotFailed"
    assert "was not ready to use after 2s: ANF volume lanes has reached 255 snapshots" in exp["status"]["message"]
    assert exp["status"]["snapshots"][0]["error"]["message"] == "ANF volume lanes has reached 255 snapshots"
    assert exp["status"]["results"]["accuracy"] == pytest.approx(0.9512)  # training results are kept


def test_permanent_api_error_fails_the_step_instead_of_retrying_forever(api_server, running_operator):
    api_server.set_faults(FaultPlan(forbidden_rate=1.0, applies=lambda call: call.resource == "persistentvolumes"
                                    and call.verb == "patch"))
    api_server.create(experiment("lanes-norbac"))
    exp = failed(api_server, "lanes-norbac")
    assert exp["status"]["reason"] == "DatasetFailed"
    assert "API request failed and cannot be retried: PATCH /api/v1/persistentvolumes/" in exp["status"]["message"]
    assert "403 Forbidden" in exp["status"]["message"]
    assert condition(exp, "VolumeShared")["status"] == "False"
    assert child_counts(api_server, "lanes-norbac") == {**NO_CHILDREN, "persistentvolumeclaims": 1, "jobs": 1}


def test_missing_dependencies_are_a_preflight_condition_until_they_appear(api_server, running_operator):
    api_server.create(experiment("lanes-wait", namespace="default", spec={
        "dataset": {"storageClassName": "anf-ultra"},
        "scheduler": {"type": "runai", "project": "vision"}}))
    api_server.wait_for(lambda: (get_experiment(api_server, "lanes-wait").get("status") or {}).get("conditions"))
    api_server.wait_for(lambda: condition(get_experiment(api_server, "lanes-wait"), "Preflight")["status"] == "False")
    exp = get_experiment(api_server, "lanes-wait")
    preflight = condition(exp, "Preflight")
    assert preflight["reason"] == "MissingDependencies"
    assert 'storage class "anf-ultra" (spec.dataset.storageClassName) not found' in preflight["message"]
    assert 'namespace "runai-vision" of RUN:ai project "vision" (spec.scheduler.project) not found' in preflight["message"]
    assert exp["status"]["phase"] == "Pending"
    api_server.wait_for(lambda: "MissingDependencies" in warning_reasons(api_server, "lanes-wait"),
                        message="a Warning Event about the missing dependencies")
    time.sleep(1.0)  # retried, not crashed, and still nothing created
    assert child_counts(api_server, "lanes-wait") == NO_CHILDREN
    assert warning_reasons(api_server, "lanes-wait").count("MissingDependencies") == 1  # one Event, not one per retry

    api_server.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "anf-ultra"},
                       "provisioner": "csi.trident.netapp.io"})
    api_server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "runai-vision"}})
    exp = wait_phase(api_server, "lanes-wait", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert condition(exp, "Preflight")["status"] == "True"


def test_missing_mpijob_api_is_reported_not_crashed(api_server, operator_factory):
    api_server.call(api_server.emulator.unregister, "kubeflow.org", "v2beta1", "mpijobs")
    running_operator = operator_factory()
    api_server.create(experiment("lanes-nompi"))
    api_server.wait_for(lambda: any(c["type"] == "Preflight" and c["status"] == "False"
                                    for c in (get_experiment(api_server, "lanes-nompi").get("status") or {})
                                    .get("conditions") or []))
    preflight = condition(get_experiment(api_server, "lanes-nompi"), "Preflight")
    assert preflight["reason"] == "MissingMPIJobAPI"
    assert "install the Kubeflow MPI operator" in preflight["message"]
    assert running_operator.process.poll() is None


INVALID_SPECS = {
    "wrong-type": ({"training": {"workers": "3"}}, "spec.training.workers: must be an integer"),
    "two-sources": ({"dataset": {"existingClaim": {"claimName": "x"}}}, "spec.dataset"),
    "zero-workers": ({"training": {"workers": 0}}, "spec.training.workers: must be >= 1"),
    "bad-size": ({"dataset": {"size": "100GB"}}, "spec.dataset.size"),
    "bad-scheduler": ({"scheduler": {"type": "slurm"}}, "spec.scheduler.type"),
    "no-project": ({"scheduler": {"type": "runai"}}, "spec.scheduler.project"),
    "unknown-field": ({"training": {"gpus": 2}}, "spec.training.gpus: unknown field"),
    "negative-lr": ({"training": {"learningRate": -0.1}}, "spec.training.learningRate"),
    "odd-height": ({"training": {"height": 290}}, "spec.training.height"),
    "reserved-env": ({"training": {"env": [{"name": "BATCH_SIZE", "value": "8"}]}}, "spec.training.env[0].name"),
    "bad-url": ({"dataset": {"synthetic": None, "download": {"urls": [{"url": "ftp://x/y.zip"}]}}},
                "spec.dataset.download.urls[0].url"),
    "bad-retention": ({"retention": {"snapshots": "Forever"}}, "spec.retention.snapshots"),
}


def test_invalid_specs_fail_once_with_the_field_path_and_create_nothing(api_server, running_operator):
    for name, (patch, _) in INVALID_SPECS.items():
        api_server.create(experiment(f"bad-{name}", spec=patch))
    for name, (_, field) in INVALID_SPECS.items():
        exp = failed(api_server, f"bad-{name}")
        assert exp["status"]["reason"] == "InvalidSpec"
        assert field in exp["status"]["message"], (name, exp["status"]["message"])
        assert condition(exp, "Failed")["reason"] == "InvalidSpec"
        assert child_counts(api_server, f"bad-{name}") == NO_CHILDREN
    writes = len([c for c in api_server.calls() if c.resource == "laneexperiments/status"])
    time.sleep(1.5)  # several resync intervals: a retry loop would write status again
    assert len([c for c in api_server.calls() if c.resource == "laneexperiments/status"]) == writes
    assert {name: warning_reasons(api_server, f"bad-{name}") for name in INVALID_SPECS} == {
        name: ["InvalidSpec"] for name in INVALID_SPECS}


def test_an_unexpected_error_in_an_experiment_pass_ends_it_with_a_condition_and_one_warning(api_server,
                                                                                          operator_factory):
    # A status no model foresaw (a condition that is not a mapping, written past the schema): the pass raises
    # AttributeError, which kopf would otherwise retry forever with its backoff.
    api_server.create(experiment("lanes-odd"))
    api_server.patch("laneexperiments", "lanes-odd", {"status": {"phase": "Training", "conditions": [7]}},
                     "default", status=True)
    operator_factory()
    exp = failed(api_server, "lanes-odd")
    assert exp["status"]["reason"] == "ReconcileError"
    assert exp["status"]["message"].startswith("the operator cannot handle this experiment (AttributeError")
    assert [(c["type"], c["status"]) for c in exp["status"]["conditions"]] == [("Failed", "True"),
                                                                                ("Succeeded", "False")]
    # The progress daemon reads the same status: it stops following, says so once, and is not retried either.
    api_server.wait_for(lambda: sorted(warning_reasons(api_server, "lanes-odd")) == ["ProgressUnreadable",
                                                                                     "ReconcileError"],
                        message="one ReconcileError and one ProgressUnreadable Warning")
    writes = experiment_writes(api_server, "lanes-odd")
    assert writes >= 1
    time.sleep(2)  # a daemon restarted by kopf would try again within its backoff (0.2 s here)
    assert sorted(warning_reasons(api_server, "lanes-odd")) == ["ProgressUnreadable", "ReconcileError"]
    assert experiment_writes(api_server, "lanes-odd") == writes
    assert child_counts(api_server, "lanes-odd") == NO_CHILDREN


def experiment_writes(cluster, name: str) -> int:
    """The operator's PATCHes of one experiment (status included)."""
    return len([c for c in cluster.calls() if c.resource.startswith("laneexperiments") and c.name == name
                and c.verb == "patch" and c.user_agent.startswith("lanex-operator/")])
