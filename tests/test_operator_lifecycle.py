"""The whole TR-4896 lifecycle run by the real operator against the emulated cluster.

Each scenario checks the exact fields of every child the operator created and the experiment's
status, conditions, Events and metrics.
"""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from k8s.scenarios import children, condition, experiment, experiment_events, wait_phase
from lanex_operator.api.models import parse_spec, training_config_hash

pytestmark = pytest.mark.timeout(60)

STEP_CONDITIONS = ("Preflight", "DatasetReady", "DataPrepared", "VolumeShared", "Trained", "Snapshotted")
TRANSITION_REASONS = ["Pending", "ProvisioningDataset", "Downloading", "SharingVolume", "Training", "Snapshotting",
                      "Succeeded"]


def owner_uids(obj: dict) -> list[str]:
    return [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or []]


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env") or []}


def validate_builtin(obj: dict) -> None:
    kubernetes_validate.validate(obj, "1.30", strict=True)


def test_kubeflow_experiment_runs_every_step_and_records_results(api_server, running_operator):
    api_server.create(experiment("lanes-a"))
    exp = wait_phase(api_server, "lanes-a", ["Succeeded", "Failed"])
    status = exp["status"]
    uid = exp["metadata"]["uid"]
    assert status["phase"] == "Succeeded", status

    kids = children(api_server, "lanes-a")
    assert {plural: len(items) for plural, items in kids.items()} == {
        "persistentvolumeclaims": 1, "jobs": 1, "mpijobs": 1, "volumesnapshots": 1}

    pvc = kids["persistentvolumeclaims"][0]
    assert pvc["metadata"]["name"] == "lanes-a-data"
    assert pvc["spec"]["storageClassName"] == "azurenetappfiles"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert "dataSource" not in pvc["spec"]
    assert owner_uids(pvc) == []  # retention.dataset Retain: the PVC outlives the experiment
    assert pvc["metadata"]["annotations"]["lanex.dev/prepared"] == "true"
    validate_builtin(pvc)

    pv = api_server.get("persistentvolumes", pvc["spec"]["volumeName"])
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]  # the simulated provisioner made it ReadWriteOnce

    job = kids["jobs"][0]
    assert job["metadata"]["name"] == "lanes-a-prepare"
    assert owner_uids(job) == [uid]
    assert job["spec"]["backoffLimit"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "lanes-a-data"}}]
    (container,) = pod["containers"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/mnt"}]
    script = container["command"][-1]
    assert container["command"][:2] == ["sh", "-c"]
    assert "lanex data synth --out /mnt/tusimple_data --clips 4 --seed 7" in script
    assert "lanex data prepare --root /mnt/tusimple_data" in script
    validate_builtin(job)

    mpijob = kids["mpijobs"][0]
    assert mpijob["metadata"]["name"] == "lanes-a-train"
    assert owner_uids(mpijob) == [uid]
    spec = mpijob["spec"]
    assert spec["slotsPerWorker"] == 1
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    launcher = spec["mpiReplicaSpecs"]["Launcher"]
    worker = spec["mpiReplicaSpecs"]["Worker"]
    assert (launcher["replicas"], worker["replicas"]) == (1, 2)
    worker_container = worker["template"]["spec"]["containers"][0]
    launcher_container = launcher["template"]["spec"]["containers"][0]
    assert worker_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in worker["template"]["spec"]["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker_container["volumeMounts"]
    assert {"name": "data", "mountPath": "/mnt"} in worker_container["volumeMounts"]
    assert env_of(launcher_container) == {
        "USE_WORKERS": "true", "NUM_WORKERS": "4", "BATCH_SIZE": "33", "USE_VAL": "true", "VAL_BATCH_SIZE": "99",
        "ENABLE_SNAPSHOT": "true", "PVC_NAME": "lanes-a-data", "LANEX_TERMINATION_GRACE_SECONDS": "180",
        "RUNAI_MPI_NUM_WORKERS": "2",
        "LANEX_JOB": "default/lanes-a"}
    assert launcher_container["command"][:7] == ["lanex", "launch", "--backend", "horovod", "--processes", "2",
                                                 "--termination-log"]
    assert "schedulerName" not in worker["template"]["spec"]
    assert "project" not in mpijob["metadata"]["labels"]

    snapshot = kids["volumesnapshots"][0]
    assert re.fullmatch(r"lanes-a-\d{14}", snapshot["metadata"]["name"])
    assert snapshot["spec"] == {"volumeSnapshotClassName": "netapp-csi-snapclass",
                                "source": {"persistentVolumeClaimName": "lanes-a-data"}}
    assert owner_uids(snapshot) == []

    assert status["observedGeneration"] == 1
    assert status["children"] == {"datasetClaim": "lanes-a-data", "prepareJob": "lanes-a-prepare",
                                  "mpiJob": "lanes-a-train", "snapshots": [snapshot["metadata"]["name"]]}
    assert status["snapshots"] == [{
        "name": snapshot["metadata"]["name"], "readyToUse": True, "restoreSize": "100Gi",
        "contentName": snapshot["status"]["boundVolumeSnapshotContentName"],
        "creationTime": snapshot["status"]["creationTime"]}]
    assert status["results"] == {"accuracy": 0.9512, "fp": 0.0621, "fn": 0.0544,
                                 "checkpoint": "/mnt/experiments/exp/checkpoints/best.pt"}
    assert status["provenance"] == {
        "trainerImage": "ghcr.io/lanex/trainer:0.1.0",
        "configHash": training_config_hash(parse_spec(exp["spec"])),
        "datasetSource": "synthetic:clips=4,seed=7",
        "resultSnapshot": snapshot["metadata"]["name"]}
    assert status["startTime"] <= status["completionTime"]
    for type_ in (*STEP_CONDITIONS, "Succeeded"):
        assert condition(exp, type_)["status"] == "True", condition(exp, type_)
    assert condition(exp, "Failed")["status"] == "False"
    assert condition(exp, "VolumeShared")["reason"] == "PatchedToReadWriteMany"

    api_server.wait_for(lambda: len(experiment_events(api_server, "lanes-a")) >= len(TRANSITION_REASONS))
    assert [event["reason"] for event in experiment_events(api_server, "lanes-a")] == TRANSITION_REASONS

    metrics = running_operator.metrics()
    assert 'lanex_experiments{phase="Succeeded"} 1.0' in metrics
    assert "lanex_snapshots_taken_total 1.0" in metrics
    assert 'lanex_step_duration_seconds_count{outcome="succeeded",step="Trained"} 1.0' in metrics


def test_runai_experiment_schedules_with_runai_and_labels_the_project(api_server, running_operator):
    api_server.create(experiment("lanes-r", namespace="runai-lanes",
                                 spec={"scheduler": {"type": "runai", "project": "lanes"},
                                       "training": {"workers": 3, "gpusPerWorker": 1}}))
    exp = wait_phase(api_server, "lanes-r", ["Succeeded", "Failed"], namespace="runai-lanes")
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    (mpijob,) = children(api_server, "lanes-r", "runai-lanes")["mpijobs"]
    assert mpijob["metadata"]["namespace"] == "runai-lanes"
    assert mpijob["metadata"]["labels"]["project"] == "lanes"
    for role in ("Launcher", "Worker"):
        template = mpijob["spec"]["mpiReplicaSpecs"][role]["template"]
        assert template["spec"]["schedulerName"] == "runai-scheduler"
        assert template["metadata"]["labels"]["project"] == "lanes"
    assert mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 3
    launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert env_of(launcher)["RUNAI_MPI_NUM_WORKERS"] == "3"


def test_restore_from_snapshot_skips_download_and_sizes_the_claim_from_the_snapshot(api_server, running_operator):
    api_server.create(experiment("lanes-src"))
    source = wait_phase(api_server, "lanes-src", ["Succeeded", "Failed"])
    snapshot_name = source["status"]["provenance"]["resultSnapshot"]

    api_server.create(experiment("lanes-restored", spec={
        "dataset": {"synthetic": None, "fromSnapshot": {"snapshotName": snapshot_name}, "size": "50Gi"}}))
    exp = wait_phase(api_server, "lanes-restored", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]

    kids = children(api_server, "lanes-restored")
    assert kids["jobs"] == []  # the snapshot holds prepared data
    (pvc,) = kids["persistentvolumeclaims"]
    assert pvc["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                         "name": snapshot_name}
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"  # restoreSize wins over 50Gi
    assert pvc["spec"]["storageClassName"] == "azurenetappfiles"
    validate_builtin(pvc)
    assert condition(exp, "DataPrepared")["reason"] == "Skipped"
    assert exp["status"]["children"].get("prepareJob") is None
    assert exp["status"]["provenance"]["datasetSource"] == f"fromSnapshot:{snapshot_name}"
    assert len(kids["volumesnapshots"]) == 1 and kids["mpijobs"][0]["metadata"]["name"] == "lanes-restored-train"


def test_existing_claim_marked_prepared_skips_the_prepare_job(api_server, running_operator):
    api_server.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": "shared-tusimple", "namespace": "default",
                                    "annotations": {"lanex.dev/prepared": "true"}},
                       "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "azurenetappfiles",
                                "resources": {"requests": {"storage": "200Gi"}}}})
    api_server.wait_for(lambda: (api_server.get("persistentvolumeclaims", "shared-tusimple", "default")
                                 .get("status") or {}).get("phase") == "Bound")
    api_server.create(experiment("lanes-claim", spec={
        "dataset": {"synthetic": None, "existingClaim": {"claimName": "shared-tusimple"}}}))
    exp = wait_phase(api_server, "lanes-claim", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    kids = children(api_server, "lanes-claim")
    assert kids["jobs"] == [] and kids["persistentvolumeclaims"] == []
    assert condition(exp, "DataPrepared")["reason"] == "Skipped"
    assert exp["status"]["children"]["datasetClaim"] == "shared-tusimple"
    (snapshot,) = kids["volumesnapshots"]
    assert snapshot["spec"]["source"]["persistentVolumeClaimName"] == "shared-tusimple"


def test_existing_claim_that_binds_after_the_experiment_starts_is_picked_up(api_server, running_operator):
    # A user's claim has no experiment label, so no watch event reaches the operator's cache when it
    # binds: the operator must re-read it rather than wait on the copy it saw first.
    api_server.knobs.paused.add("PersistentVolumeClaim")
    api_server.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": "late-tusimple", "namespace": "default",
                                    "annotations": {"lanex.dev/prepared": "true"}},
                       "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "azurenetappfiles",
                                "resources": {"requests": {"storage": "200Gi"}}}})
    api_server.create(experiment("lanes-late-claim", spec={
        "dataset": {"synthetic": None, "existingClaim": {"claimName": "late-tusimple"}}}))
    wait_phase(api_server, "lanes-late-claim", ["ProvisioningDataset"])
    api_server.knobs.paused.discard("PersistentVolumeClaim")
    exp = wait_phase(api_server, "lanes-late-claim", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert condition(exp, "DatasetReady")["reason"] == "Bound"
