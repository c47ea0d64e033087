"""Pure manifest builders: the exact children of a RUN:ai experiment (TR-4896's run), a Kubeflow
one and a restore, all valid for Kubernetes 1.30, deterministic, and running the plan's
commands verbatim."""

from __future__ import annotations

import copy
import shlex
from datetime import datetime, timedelta, timezone
from typing import Any

import kubernetes_validate
import pytest

from lanex_operator.api import InvalidSpecError, parse_spec
from lanex_operator.controller.builders import (
    mpijob_for,
    prepare_job_for,
    pv_is_shared,
    pv_rwx_patch,
    pvc_for,
    restore_pvc_for,
    snapshot_for,
)
from lanex_operator.plan.defaults import ClusterDefaults
from lanex_operator.plan.steps import StepName, plan_for, snapshot_name

SHA = "0123456789abcdef" * 4
AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
LABELS = {
    "app.kubernetes.io/name": "lanex",
    "app.kubernetes.io/managed-by": "lanex",
    "lanex.dev/experiment": "tr4896",
}

RUNAI_SPEC = {
    "dataset": {
        "download": {
            "urls": [
                {"url": "https://data.example.com/tusimple/train_set.zip", "sha256": SHA},
                {"url": "https://data.example.com/tusimple/test_label.json"},
            ]
        }
    },
    "training": {"validation": {"enabled": False}},
    "scheduler": {"type": "runai", "project": "lane-detection"},
}
KUBEFLOW_SPEC = {
    "dataset": {"synthetic": {"clips": 40, "seed": 7}, "storageClassName": "standard", "size": "5Gi"},
    "training": {
        "backend": "torch",
        "backbone": "small",
        "workers": 2,
        "gpusPerWorker": 2,
        "largeShm": False,
        "epochs": 2,
        "learningRate": 0.01,
        "height": 144,
        "width": 400,
        "resources": {"requests": {"cpu": 2, "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
        "nodeSelector": {"agentpool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
        "activeDeadlineSeconds": 7200,
    },
    "scheduler": {"type": "kubeflow"},
    "snapshot": {"volumeSnapshotClassName": "csi-snapclass"},
}
RESTORE_SPEC = {
    "dataset": {"fromSnapshot": {"snapshotName": "tr4896-20250304050607"}, "size": "50Gi"},
    "scheduler": {"type": "runai", "project": "lane-detection"},
}


def build(spec_dict: dict[str, Any], name: str = "tr4896", namespace: str = "runai-lane-detection"):
    spec = parse_spec(spec_dict)
    meta = {"name": name, "namespace": namespace}
    return meta, spec, plan_for(name, namespace, spec)


def validate_builtin(manifest: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(manifest, "1.30", strict=True) == "1.30"


def validate_pod_templates(mpijob: dict[str, Any]) -> None:
    # MPIJob is not a built-in kind; its pod templates are, so validate them as PodTemplates.
    for role, replica in mpijob["spec"]["mpiReplicaSpecs"].items():
        validate_builtin(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()}, "template": replica["template"]}
        )


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container["env"]}


# --- the RUN:ai experiment: TR-4896's run --------------------------------------------------


def test_runai_dataset_pvc_is_rwx_on_the_anf_class():
    meta, spec, plan = build(RUNAI_SPEC)
    pvc = pvc_for(meta, spec, plan)
    assert pvc == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "tr4896-data",
            "namespace": "runai-lane-detection",
            "labels": {**LABELS, "app.kubernetes.io/component": "dataset"},
            "annotations": {
                "lanex.dev/dataset-source": "download:https://data.example.com/tusimple/train_set.zip"
                f"#sha256={SHA},https://data.example.com/tusimple/test_label.json"
            },
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "azurenetappfiles",
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "100Gi"}},
        },
    }
    validate_builtin(pvc)


def test_runai_prepare_job_downloads_each_url_then_prepares():
    meta, spec, plan = build(RUNAI_SPEC)
    job = prepare_job_for(meta, spec, plan)
    assert job["metadata"]["name"] == "tr4896-prepare" and job["metadata"]["namespace"] == "runai-lane-detection"
    assert job["metadata"]["labels"] == {**LABELS, "app.kubernetes.io/component": "prepare"}
    assert job["spec"]["backoffLimit"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "tr4896-data"}}]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/lanex/trainer:0.1.0"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/mnt"}]
    assert "env" not in container
    assert container["command"] == [
        "sh",
        "-c",
        "set -e\n"
        "if [ -f /mnt/tusimple_data/.lanex-prepared ]; then"
        ' echo "lanex: dataset already prepared (/mnt/tusimple_data/.lanex-prepared)"; exit 0; fi\n'
        f"lanex data download --url https://data.example.com/tusimple/train_set.zip --sha256 {SHA}"
        " --out /mnt/tusimple_data\n"
        "lanex data download --url https://data.example.com/tusimple/test_label.json --out /mnt/tusimple_data\n"
        "lanex data prepare --root /mnt/tusimple_data\n"
        "touch /mnt/tusimple_data/.lanex-prepared\n",
    ]
    validate_builtin(job)


def test_runai_mpijob_is_tr4896_three_workers_one_gpu_each():
    meta, spec, plan = build(RUNAI_SPEC)
    mpijob = mpijob_for(meta, spec, plan)
    labels = {**LABELS, "app.kubernetes.io/component": "training", "project": "lane-detection"}
    assert mpijob["apiVersion"] == "kubeflow.org/v2beta1" and mpijob["kind"] == "MPIJob"
    assert mpijob["metadata"]["name"] == "tr4896-train"
    assert mpijob["metadata"]["namespace"] == "runai-lane-detection"
    assert mpijob["metadata"]["labels"] == labels
    assert mpijob["metadata"]["annotations"]["lanex.dev/config-hash"] == plan.config_hash
    body = mpijob["spec"]
    assert body["slotsPerWorker"] == 1 and body["mpiImplementation"] == "OpenMPI"
    assert body["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}
    launcher, worker = body["mpiReplicaSpecs"]["Launcher"], body["mpiReplicaSpecs"]["Worker"]
    assert (launcher["replicas"], worker["replicas"]) == (1, 3)
    assert launcher["template"]["metadata"]["labels"] == {**labels, "lanex.dev/role": "launcher"}
    assert worker["template"]["metadata"]["labels"] == {**labels, "lanex.dev/role": "worker"}
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "tr4896-data"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [{"name": "data", "mountPath": "/mnt"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    tr4896_env = {
        "USE_WORKERS": "true",
        "NUM_WORKERS": "4",
        "BATCH_SIZE": "33",
        "USE_VAL": "false",
        "VAL_BATCH_SIZE": "99",
        "ENABLE_SNAPSHOT": "true",
        "PVC_NAME": "tr4896-data",
        "LANEX_TERMINATION_GRACE_SECONDS": "180",
    }
    for replica in (launcher, worker):
        pod = replica["template"]["spec"]
        assert pod["schedulerName"] == "runai-scheduler"
        assert pod["volumes"] == volumes
        assert pod["containers"][0]["volumeMounts"] == mounts
        assert pod["containers"][0]["image"] == "ghcr.io/lanex/trainer:0.1.0"
    (launcher_container,) = launcher["template"]["spec"]["containers"]
    (worker_container,) = worker["template"]["spec"]["containers"]
    assert env_of(launcher_container) == {**tr4896_env, "RUNAI_MPI_NUM_WORKERS": "3",
                                          "LANEX_JOB": "runai-lane-detection/tr4896"}
    assert env_of(worker_container) == tr4896_env
    assert launcher_container["command"] == [
        "lanex", "launch", "--backend", "horovod", "--processes", "3", "--termination-log", "/dev/termination-log",
        "--", "lanex", "train", "--data-root", "/mnt/tusimple_data", "--output-dir", "/mnt/experiments/tr4896",
        "--backbone", "vgg16_bn", "--epochs", "30", "--lr", "0.05", "--height", "288", "--width", "800",
    ]  # fmt: skip
    assert launcher_container["terminationMessagePath"] == "/dev/termination-log"
    assert launcher_container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "resources" not in launcher_container
    # `lanex worker` (PID 1) around sshd: on SIGTERM the ranks below it checkpoint their step first.
    assert worker_container["command"] == ["lanex", "worker", "--", "/usr/sbin/sshd", "-De", "-f",
                                           "/home/mpiuser/.sshd_config"]
    # The trainer image's unprivileged mpiuser runs sshd and mpirun, with mpi-operator's keys in its home.
    assert mpijob["spec"]["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    for role in ("Launcher", "Worker"):
        pod = mpijob["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]
        assert pod["securityContext"] == {"runAsUser": 1001, "runAsGroup": 1001, "runAsNonRoot": True}
    assert worker_container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    validate_pod_templates(mpijob)


def test_pods_get_the_spec_grace_period_and_the_ranks_are_told_it():
    document = copy.deepcopy(RUNAI_SPEC)
    document["training"]["terminationGracePeriodSeconds"] = 600
    meta, spec, plan = build(document)
    mpijob = mpijob_for(meta, spec, plan)
    for role in ("Launcher", "Worker"):
        pod = mpijob["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 600
        assert env_of(pod["containers"][0])["LANEX_TERMINATION_GRACE_SECONDS"] == "600"
    # How pods stop changes nothing that is trained: the same config hash, so a rerun may change it.
    assert plan.config_hash == build(RUNAI_SPEC)[2].config_hash
    validate_pod_templates(mpijob)


def test_runai_snapshot_is_named_from_experiment_and_utc_time():
    meta, spec, plan = build(RUNAI_SPEC)
    snapshot = snapshot_for(meta, spec, plan, AT)
    assert snapshot == {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": "tr4896-20250304050607",
            "namespace": "runai-lane-detection",
            "labels": {**LABELS, "app.kubernetes.io/component": "snapshot"},
            "annotations": {
                "lanex.dev/trainer-image": "ghcr.io/lanex/trainer:0.1.0",
                "lanex.dev/config-hash": plan.config_hash,
                "lanex.dev/dataset-source": plan.dataset_source,
            },
        },
        "spec": {
            "volumeSnapshotClassName": "netapp-csi-snapclass",
            "source": {"persistentVolumeClaimName": "tr4896-data"},
        },
    }
    later_elsewhere = AT.astimezone(timezone(timedelta(hours=2)))
    assert snapshot_for(meta, spec, plan, later_elsewhere)["metadata"]["name"] == "tr4896-20250304050607"
    assert snapshot_name("tr4896", datetime(2025, 3, 4, 5, 6, 7)) == "tr4896-20250304050607"


# --- the Kubeflow experiment ----------------------------------------------------------------


def test_kubeflow_mpijob_uses_the_default_scheduler_and_the_spec_resources():
    meta, spec, plan = build(KUBEFLOW_SPEC, name="ddp", namespace="ml")
    mpijob = mpijob_for(meta, spec, plan)
    assert "project" not in mpijob["metadata"]["labels"]
    body = mpijob["spec"]
    assert body["slotsPerWorker"] == 2
    assert body["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3, "activeDeadlineSeconds": 7200}
    launcher_pod = body["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker_pod = body["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert body["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert "schedulerName" not in launcher_pod and "schedulerName" not in worker_pod
    assert worker_pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "ddp-data"}}]
    assert worker_pod["nodeSelector"] == {"agentpool": "gpu"}
    assert worker_pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in launcher_pod and "tolerations" not in launcher_pod
    (worker,) = worker_pod["containers"]
    assert worker["volumeMounts"] == [{"name": "data", "mountPath": "/mnt"}]
    assert worker["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"},
    }
    (launcher,) = launcher_pod["containers"]
    assert env_of(launcher)["RUNAI_MPI_NUM_WORKERS"] == "4"
    assert env_of(launcher)["NCCL_DEBUG"] == "INFO" and env_of(worker)["NCCL_DEBUG"] == "INFO"
    assert launcher["command"][:9] == [
        "lanex", "launch", "--backend", "torch", "--processes", "4", "--termination-log", "/dev/termination-log", "--",
    ]  # fmt: skip
    assert launcher["command"][9:] == list(plan.train.train_command)
    assert plan.train.train_command[-10:] == (
        "--backbone", "small", "--epochs", "2", "--lr", "0.01", "--height", "144", "--width", "400",
    )  # fmt: skip
    validate_pod_templates(mpijob)


def test_kubeflow_synthetic_data_and_snapshot_class():
    meta, spec, plan = build(KUBEFLOW_SPEC, name="ddp", namespace="ml")
    pvc = pvc_for(meta, spec, plan)
    assert pvc["spec"]["storageClassName"] == "standard"
    assert pvc["spec"]["resources"] == {"requests": {"storage": "5Gi"}}
    job = prepare_job_for(meta, spec, plan)
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "lanex data synth --out /mnt/tusimple_data --clips 40 --seed 7\n" in script
    snapshot = snapshot_for(meta, spec, plan, AT)
    assert snapshot["metadata"]["name"] == "ddp-20250304050607"
    assert snapshot["spec"] == {"volumeSnapshotClassName": "csi-snapclass", "source": {"persistentVolumeClaimName": "ddp-data"}}
    for manifest in (pvc, job):
        validate_builtin(manifest)


def test_cpu_workers_get_no_gpu_limit_and_one_slot():
    spec_dict = copy.deepcopy(KUBEFLOW_SPEC)
    spec_dict["training"].update(gpusPerWorker=0, resources={})
    meta, spec, plan = build(spec_dict, name="cpu", namespace="ml")
    mpijob = mpijob_for(meta, spec, plan)
    assert mpijob["spec"]["slotsPerWorker"] == 1
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert "resources" not in worker
    assert plan.train.processes == 2
    validate_pod_templates(mpijob)


# --- the restore experiment -----------------------------------------------------------------


def test_restore_pvc_comes_from_the_snapshot_and_is_at_least_its_restore_size():
    meta, spec, plan = build(RESTORE_SPEC, name="again")
    pvc = restore_pvc_for(meta, spec, plan, restore_size="100Gi")
    assert pvc["metadata"]["name"] == "again-data"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "azurenetappfiles",
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "100Gi"}},
        "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "tr4896-20250304050607"},
    }
    assert restore_pvc_for(meta, spec, plan, restore_size="10Gi")["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert restore_pvc_for(meta, spec, plan)["spec"]["resources"]["requests"]["storage"] == "50Gi"
    validate_builtin(pvc)


def test_restore_skips_prepare_and_still_trains_and_snapshots():
    meta, spec, plan = build(RESTORE_SPEC, name="again")
    assert plan.steps == (StepName.DATASET, StepName.SHARE, StepName.TRAIN, StepName.SNAPSHOT)
    with pytest.raises(ValueError, match="needs no prepare Job"):
        prepare_job_for(meta, spec, plan)
    with pytest.raises(ValueError, match="use restore_pvc_for"):
        pvc_for(meta, spec, plan)
    mpijob = mpijob_for(meta, spec, plan)
    launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert "/mnt/experiments/again" in launcher["command"] and env_of(launcher)["PVC_NAME"] == "again-data"
    assert snapshot_for(meta, spec, plan, AT)["spec"]["source"] == {"persistentVolumeClaimName": "again-data"}


def test_existing_claim_is_used_as_is_and_only_prepared():
    meta, spec, plan = build({"dataset": {"existingClaim": {"claimName": "shared-tusimple"}}}, name="reuse")
    assert plan.names.dataset_claim == "shared-tusimple" and not plan.dataset.creates_claim
    with pytest.raises(ValueError, match="existing claim 'shared-tusimple'"):
        pvc_for(meta, spec, plan)
    assert plan.prepare is not None
    assert plan.prepare.commands == (("lanex", "data", "prepare", "--root", "/mnt/tusimple_data"),)
    pod = mpijob_for(meta, spec, plan)["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "data", "persistentVolumeClaim": {"claimName": "shared-tusimple"}}


# --- the cluster's defaults -------------------------------------------------------------------

SITE_DEFAULTS = ClusterDefaults(trainer_image="registry.example.com/lanex/trainer:0.2.0",
                                storage_class_name="anf-ultra", volume_snapshot_class_name="anf-snapclass")


def test_unset_image_and_classes_take_the_clusters_defaults_in_every_child():
    spec = parse_spec({"dataset": {"synthetic": {"clips": 4}}})
    meta = {"name": "site", "namespace": "ml"}
    plan = plan_for("site", "ml", spec, defaults=SITE_DEFAULTS)
    assert plan.defaulted == ("spec.training.image", "spec.dataset.storageClassName",
                              "spec.snapshot.volumeSnapshotClassName", "spec.scheduler.type")
    assert pvc_for(meta, spec, plan)["spec"]["storageClassName"] == "anf-ultra"
    job = prepare_job_for(meta, spec, plan)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/lanex/trainer:0.2.0"
    mpijob = mpijob_for(meta, spec, plan)
    for replica in mpijob["spec"]["mpiReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == "registry.example.com/lanex/trainer:0.2.0"
        assert "schedulerName" not in replica["template"]["spec"]
    assert mpijob["metadata"]["annotations"]["lanex.dev/trainer-image"] == "registry.example.com/lanex/trainer:0.2.0"
    assert snapshot_for(meta, spec, plan, AT)["spec"]["volumeSnapshotClassName"] == "anf-snapclass"
    assert plan.trainer_image == "registry.example.com/lanex/trainer:0.2.0"
    # The config hash covers the spec as written; the image it ran with is provenance next to it.
    assert plan.config_hash == plan_for("site", "ml", spec).config_hash


def test_what_the_spec_names_wins_over_the_clusters_defaults():
    meta, spec, plan = build(KUBEFLOW_SPEC, name="ddp", namespace="ml")
    sited = plan_for("ddp", "ml", spec, defaults=SITE_DEFAULTS)
    assert sited.defaulted == ("spec.training.image",)  # the spec names classes and scheduler, not the image
    assert pvc_for(meta, spec, sited)["spec"]["storageClassName"] == "standard"
    assert snapshot_for(meta, spec, sited, AT)["spec"]["volumeSnapshotClassName"] == "csi-snapclass"
    pinned = parse_spec({**KUBEFLOW_SPEC, "training": {**KUBEFLOW_SPEC["training"], "image": "mine/trainer:1"}})
    assert plan_for("ddp", "ml", pinned, defaults=SITE_DEFAULTS).train.launcher.image == "mine/trainer:1"


def test_default_runai_scheduler_runs_in_the_project_of_the_namespace():
    runai = ClusterDefaults(scheduler="runai")
    spec = parse_spec({"dataset": {"synthetic": {}}})
    meta = {"name": "lanes", "namespace": "runai-lane-detection"}
    plan = plan_for("lanes", "runai-lane-detection", spec, defaults=runai)
    assert (plan.train.scheduler, plan.train.runai_project) == ("runai", "lane-detection")
    mpijob = mpijob_for(meta, spec, plan)
    assert mpijob["metadata"]["labels"]["project"] == "lane-detection"
    for replica in mpijob["spec"]["mpiReplicaSpecs"].values():
        assert replica["template"]["spec"]["schedulerName"] == "runai-scheduler"
    validate_pod_templates(mpijob)
    # A spec that says kubeflow keeps the default scheduler, whatever the cluster's default.
    kubeflow = parse_spec({"dataset": {"synthetic": {}}, "scheduler": {"type": "kubeflow"}})
    assert plan_for("lanes", "runai-lane-detection", kubeflow, defaults=runai).train.scheduler == "kubeflow"


def test_default_runai_scheduler_outside_a_project_namespace_is_an_invalid_spec():
    spec = parse_spec({"dataset": {"synthetic": {}}})
    with pytest.raises(InvalidSpecError) as caught:
        plan_for("lanes", "ml-team", spec, defaults=ClusterDefaults(scheduler="runai"))
    message = str(caught.value)
    assert message.startswith("spec.scheduler.type: unset, and the operator's default scheduler "
                              "(LANEX_DEFAULT_SCHEDULER) is runai")
    assert "runai-<project> (not 'ml-team')" in message


# --- properties of all builders ---------------------------------------------------------------


@pytest.mark.parametrize("spec_dict", [RUNAI_SPEC, KUBEFLOW_SPEC, RESTORE_SPEC], ids=["runai", "kubeflow", "restore"])
def test_builders_are_deterministic_and_do_not_share_state(spec_dict):
    def everything():
        meta, spec, plan = build(spec_dict)
        claim = restore_pvc_for(meta, spec, plan, "1Gi") if plan.dataset.restore_from else pvc_for(meta, spec, plan)
        job = prepare_job_for(meta, spec, plan) if plan.prepare else None
        return [claim, job, mpijob_for(meta, spec, plan), snapshot_for(meta, spec, plan, AT)]

    first, second = everything(), everything()
    assert first == second
    first[2]["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"].append({"name": "x"})
    assert everything() == second  # mutating one result cannot leak into the next


def test_builders_run_the_plans_commands_verbatim():
    meta, spec, plan = build(RUNAI_SPEC)
    assert plan.prepare is not None
    script = prepare_job_for(meta, spec, plan)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert script == list(plan.prepare.container.command) == ["sh", "-c", plan.prepare.script()]
    for command in plan.prepare.commands:
        assert shlex.join(command) in script[2].splitlines()
    replicas = mpijob_for(meta, spec, plan)["spec"]["mpiReplicaSpecs"]
    assert replicas["Launcher"]["template"]["spec"]["containers"][0]["command"] == list(plan.train.launcher.command)
    assert replicas["Worker"]["template"]["spec"]["containers"][0]["command"] == list(plan.train.worker.command)
    assert env_of(replicas["Launcher"]["template"]["spec"]["containers"][0]) == plan.train.launcher.env_dict()


def test_plan_paths_are_parameters_for_the_local_runner():
    spec = parse_spec({"dataset": {"synthetic": {"clips": 3}}, "training": {"workers": 2, "gpusPerWorker": 0}})
    plan = plan_for("demo", "default", spec, mount_root="/tmp/ws/volumes/demo-data", termination_log="/tmp/ws/term")
    assert plan.paths.data_root == "/tmp/ws/volumes/demo-data/tusimple_data"
    assert plan.paths.output_dir == "/tmp/ws/volumes/demo-data/experiments/demo"
    assert plan.prepare is not None
    assert plan.prepare.commands[0] == (
        "lanex", "data", "synth", "--out", "/tmp/ws/volumes/demo-data/tusimple_data", "--clips", "3", "--seed", "0",
    )  # fmt: skip
    assert plan.prepare.done_marker == "/tmp/ws/volumes/demo-data/tusimple_data/.lanex-prepared"
    launch = plan.train.launcher.command
    assert launch[launch.index("--termination-log") + 1] == "/tmp/ws/term"
    assert launch[launch.index("--processes") + 1] == "2"


def test_metadata_must_match_the_plan_and_names_must_fit():
    meta, spec, plan = build(RUNAI_SPEC)
    with pytest.raises(ValueError, match="plan is for runai-lane-detection/tr4896"):
        mpijob_for({"name": "other", "namespace": "runai-lane-detection"}, spec, plan)
    with pytest.raises(InvalidSpecError, match="metadata.name: must have at most 42 characters"):
        plan_for("x" * 43, "default", spec)
    with pytest.raises(ValueError, match="snapshot.enabled is false"):
        disabled = parse_spec({**RUNAI_SPEC, "snapshot": {"enabled": False}})
        snapshot_for(meta, disabled, plan_for("tr4896", "runai-lane-detection", disabled), AT)


def test_pv_patch_shares_a_read_write_once_volume():
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "pvc-1234"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "100Gi"},
            "csi": {"driver": "csi.trident.netapp.io", "volumeHandle": "pvc-1234"},
        },
    }
    assert not pv_is_shared(pv)
    patched = {**pv, "spec": {**pv["spec"], **pv_rwx_patch()["spec"]}}
    assert pv_rwx_patch() == {"spec": {"accessModes": ["ReadWriteMany"]}}
    assert pv_is_shared(patched)
    validate_builtin(patched)
