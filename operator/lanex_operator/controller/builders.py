"""Pure builders: (experiment metadata, spec, plan) -> the manifests of the experiment's children.

No API calls, no clock, no randomness: the same inputs give the same dicts, so the reconciler
can create a child idempotently and tests can compare manifests field by field. Commands,
environment and mounts come verbatim from the plan (`lanex_operator.plan.steps`), which the local
runner uses too. Owner references are added by the operator (kopf.adopt), not here, because
retention decides which children the experiment owns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional

from lanex_operator.api.models import LaneExperimentSpec
from lanex_operator.api.sweep import SWEEP_LABEL
from lanex_operator.api.quantity import max_quantity
from lanex_operator.plan.steps import (
    DATA_VOLUME,
    SHM_VOLUME,
    SSH_AUTH_MOUNT_PATH,
    TRAINER_USER_ID,
    ContainerRun,
    ExperimentPlan,
)

MANAGED_BY = "lanex"
EXPERIMENT_LABEL = "lanex.dev/experiment"
RUNAI_SCHEDULER = "runai-scheduler"
GPU_RESOURCE = "nvidia.com/gpu"
SNAPSHOT_API_GROUP = "snapshot.storage.k8s.io"
# Kueue (kubernetes-sigs/kueue, MPIJob integration) queues a job labelled with its LocalQueue, created
# suspended; it admits the job by setting spec.runPolicy.suspend to false.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# mpi-operator >= 0.5.0: create the launcher only once every worker pod is Ready, so that the workers'
# Service resolves when Horovod's ssh checks start (the default, AtStartup, does not wait).
WAIT_FOR_WORKERS_READY = "WaitForWorkersReady"
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
# `lanex mlflow sweep-run` retries the server for 120 s; a pod that cannot start in time fails the Job.
MLFLOW_JOB_DEADLINE_SECONDS = 600

Manifest = dict[str, Any]


def labels_for(plan: ExperimentPlan, component: str) -> dict[str, str]:
    """Labels every child carries (`lanex logs`/`lanex get` select on them)."""
    return {
        "app.kubernetes.io/name": "lanex",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": component,
        EXPERIMENT_LABEL: plan.name,
    }


def provenance_annotations(plan: ExperimentPlan) -> dict[str, str]:
    """Annotations that let a child be traced back to its inputs without the experiment."""
    return {
        "lanex.dev/trainer-image": plan.trainer_image,
        "lanex.dev/config-hash": plan.config_hash,
        "lanex.dev/dataset-source": plan.dataset_source,
    }


def pvc_for(meta: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan) -> Manifest:
    """The dataset PVC, ReadWriteMany from the start (no PV patch needed where RWX is supported)."""
    _check_meta(meta, plan)
    if not plan.dataset.creates_claim:
        raise ValueError(f"{plan.name}: dataset uses the existing claim {plan.dataset.claim_name!r}; no PVC to build")
    if plan.dataset.restore_from is not None:
        raise ValueError(f"{plan.name}: dataset restores snapshot {plan.dataset.restore_from!r}; use restore_pvc_for")
    return _claim(plan, plan.dataset.size)


def restore_pvc_for(
    meta: Mapping[str, Any],
    spec: LaneExperimentSpec,
    plan: ExperimentPlan,
    restore_size: Optional[str] = None,
) -> Manifest:
    """The dataset PVC restored from `dataset.fromSnapshot`, at least as large as the snapshot's restoreSize."""
    _check_meta(meta, plan)
    if plan.dataset.restore_from is None:
        raise ValueError(f"{plan.name}: dataset.fromSnapshot is not set; use pvc_for")
    size = max_quantity(plan.dataset.size, restore_size) if restore_size else plan.dataset.size
    claim = _claim(plan, size)
    claim["spec"]["dataSource"] = {
        "apiGroup": SNAPSHOT_API_GROUP,
        "kind": "VolumeSnapshot",
        "name": plan.dataset.restore_from,
    }
    return claim


def prepare_job_for(meta: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan) -> Manifest:
    """The batch/v1 Job that downloads or synthesises the data and prepares it on the volume."""
    _check_meta(meta, plan)
    if plan.prepare is None:
        raise ValueError(f"{plan.name}: the dataset is restored from a snapshot and needs no prepare Job")
    labels = labels_for(plan, "prepare")
    container = {
        **_container("prepare", plan.prepare.container),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        # The secretRefs' Secrets, by name only: their values reach the pod as files, never the manifest.
        "volumes": [_data_volume(plan)] + [
            {"name": secret.volume, "secret": {"secretName": secret.secret_name}} for secret in plan.prepare.secret_mounts
        ],
    }
    pod_labels = dict(labels)
    if plan.prepare.service_account_name is not None:
        pod["serviceAccountName"] = plan.prepare.service_account_name
        pod_labels[WORKLOAD_IDENTITY_LABEL] = "true"  # the webhook injects the federated token for az:// reads
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": plan.names.prepare_job,
            "namespace": plan.namespace,
            "labels": labels,
            "annotations": provenance_annotations(plan),
        },
        "spec": {
            "backoffLimit": plan.prepare.backoff_limit,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


def mpijob_for(meta: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan, *,
               launcher_creation_policy: bool = True) -> Manifest:
    """The kubeflow.org/v2beta1 MPIJob: one launcher running `lanex launch`, `workers` GPU workers.

    With the runai scheduler (the spec's, or the cluster's default) the job and its pods carry
    `project: <project>` and the pods use `runai-scheduler`; RUN:ai users create the experiment in
    their project's namespace (`runai-<project>`), which is where the MPIJob is created too.
    With kueue the MPIJob (not its pods: Kueue's pod integration would gate them) carries the queue
    label and is created suspended. `launcher_creation_policy` is False for an mpi-operator older
    than 0.5.0, whose CRD has no such field (`lanex launch` then waits for the workers itself).
    """
    _check_meta(meta, plan)
    train = plan.train
    labels = labels_for(plan, "training")
    if train.scheduler == "runai":
        labels["project"] = str(train.runai_project)

    launcher = {
        **_container("launcher", train.launcher),
        "terminationMessagePath": plan.paths.termination_log,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    worker = _container("worker", train.worker)
    resources = _worker_resources(spec, train.gpus_per_worker)
    if resources:
        worker["resources"] = resources

    volumes = [_data_volume(plan)]
    if train.large_shm:
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})

    # sshd and mpirun run unprivileged as the image's mpiuser (no root, no privileged port).
    security = {"runAsUser": TRAINER_USER_ID, "runAsGroup": TRAINER_USER_ID, "runAsNonRoot": True}
    # Both get the grace period: on SIGTERM the ranks (on the workers) finish their step and checkpoint it,
    # while the launcher waits for mpirun to see them leave.
    grace = train.termination_grace_period_seconds
    launcher_pod: dict[str, Any] = {"securityContext": dict(security), "containers": [launcher], "volumes": volumes,
                                    "terminationGracePeriodSeconds": grace}
    worker_pod: dict[str, Any] = {"securityContext": dict(security), "containers": [worker],
                                  "volumes": [dict(volume) for volume in volumes], "terminationGracePeriodSeconds": grace}
    if spec.training.node_selector:
        worker_pod["nodeSelector"] = dict(spec.training.node_selector)
    if spec.training.tolerations:
        worker_pod["tolerations"] = [
            toleration.model_dump(by_alias=True, exclude_none=True) for toleration in spec.training.tolerations
        ]
    if train.scheduler == "runai":
        launcher_pod["schedulerName"] = RUNAI_SCHEDULER
        worker_pod["schedulerName"] = RUNAI_SCHEDULER

    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running", "backoffLimit": train.backoff_limit}
    if train.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = train.active_deadline_seconds
    job_labels = dict(labels)
    if train.scheduler == "kueue":
        job_labels[KUEUE_QUEUE_LABEL] = str(train.kueue_queue)
        run_policy["suspend"] = True
    extra_spec = {"launcherCreationPolicy": WAIT_FOR_WORKERS_READY} if launcher_creation_policy else {}

    return {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": {
            "name": plan.names.mpijob,
            "namespace": plan.namespace,
            "labels": job_labels,
            "annotations": provenance_annotations(plan),
        },
        "spec": {
            **extra_spec,
            "slotsPerWorker": train.slots_per_worker,
            "mpiImplementation": "OpenMPI",
            "sshAuthMountPath": SSH_AUTH_MOUNT_PATH,
            "runPolicy": run_policy,
            "mpiReplicaSpecs": {
                "Launcher": {
                    "replicas": 1,
                    "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": {**labels, "lanex.dev/role": "launcher"}}, "spec": launcher_pod},
                },
                "Worker": {
                    "replicas": train.workers,
                    "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": {**labels, "lanex.dev/role": "worker"}}, "spec": worker_pod},
                },
            },
        },
    }


def snapshot_for(meta: Mapping[str, Any], spec: LaneExperimentSpec, plan: ExperimentPlan, at: datetime) -> Manifest:
    """The snapshot.storage.k8s.io/v1 VolumeSnapshot of the dataset PVC, named `<experiment>-<UTC time>`."""
    _check_meta(meta, plan)
    if plan.snapshot is None:
        raise ValueError(f"{plan.name}: snapshot.enabled is false")
    return {
        "apiVersion": f"{SNAPSHOT_API_GROUP}/v1",
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": plan.names.snapshot(at),
            "namespace": plan.namespace,
            "labels": labels_for(plan, "snapshot"),
            "annotations": provenance_annotations(plan),
        },
        "spec": {
            "volumeSnapshotClassName": plan.snapshot.volume_snapshot_class_name,
            "source": {"persistentVolumeClaimName": plan.snapshot.source_claim},
        },
    }


def sweep_mlflow_job_for(sweep_meta: Mapping[str, Any], name: str, run: ContainerRun) -> Manifest:
    """The batch/v1 Job that finds, creates or ends a sweep's MLflow parent run (`lanex mlflow sweep-run`).

    One pod, tried once: the command itself retries the server for a while. Its answer (the run's link)
    is the pod's termination message. The server's credentials come from the Secret by reference only.
    """
    labels = {"app.kubernetes.io/name": "lanex", "app.kubernetes.io/managed-by": MANAGED_BY,
              "app.kubernetes.io/component": "mlflow", SWEEP_LABEL: sweep_meta["name"]}
    container = {**_container("mlflow", run), "terminationMessagePolicy": "FallbackToLogsOnError"}
    container.pop("volumeMounts")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": sweep_meta["namespace"], "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": MLFLOW_JOB_DEADLINE_SECONDS,
            "template": {"metadata": {"labels": dict(labels)},
                         "spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def pv_is_shared(pv: Mapping[str, Any]) -> bool:
    """True when a PersistentVolume can already be mounted by pods on several nodes."""
    return "ReadWriteMany" in (pv.get("spec") or {}).get("accessModes", [])


def pv_rwx_patch() -> Manifest:
    """TR-4896's `kubectl patch pv NAME -p '{"spec":{"accessModes":["ReadWriteMany"]}}'` as a merge patch."""
    return {"spec": {"accessModes": ["ReadWriteMany"]}}


# --- helpers -----------------------------------------------------------------------------


def _check_meta(meta: Mapping[str, Any], plan: ExperimentPlan) -> None:
    # A plan built for another experiment would give children the wrong names.
    name, namespace = meta.get("name"), meta.get("namespace", plan.namespace)
    if name != plan.name or namespace != plan.namespace:
        raise ValueError(
            f"plan is for {plan.namespace}/{plan.name}, metadata names {namespace}/{name}: build the plan from this experiment"
        )


def _claim(plan: ExperimentPlan, size: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": plan.dataset.claim_name,
            "namespace": plan.namespace,
            "labels": labels_for(plan, "dataset"),
            "annotations": {"lanex.dev/dataset-source": plan.dataset_source},
        },
        "spec": {
            "accessModes": list(plan.dataset.access_modes),
            "storageClassName": plan.dataset.storage_class_name,
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": size}},
        },
    }


def _container(name: str, run: ContainerRun) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": run.image,
        "imagePullPolicy": run.image_pull_policy,
        "command": list(run.command),
    }
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in run.env]
    # A Secret's key by reference: its value reaches the pod, never the manifest; a key the Secret lacks
    # leaves the variable unset (a token, or a user name and password: either is enough).
    env += [{"name": item.name, "valueFrom": {"secretKeyRef": {"name": item.secret_name, "key": item.key,
                                                               "optional": True}}} for item in run.secret_env]
    if env:
        container["env"] = env
    container["volumeMounts"] = [
        {"name": mount.volume, "mountPath": mount.path, **({"readOnly": True} if mount.read_only else {})}
        for mount in run.mounts
    ]
    return container


def _data_volume(plan: ExperimentPlan) -> dict[str, Any]:
    return {"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": plan.dataset.claim_name}}


def _worker_resources(spec: LaneExperimentSpec, gpus: int) -> dict[str, dict[str, str]]:
    requests = dict(spec.training.resources.requests)
    limits = dict(spec.training.resources.limits)
    if gpus > 0:
        limits[GPU_RESOURCE] = str(gpus)
    resources = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources
