"""mpi-operator v0.8.2's own checks of an MPIJob, beyond its CRD schema, for the simulated controller.

Why it exists: mpi-operator (pkg/apis/kubeflow/validation/validation.go, run by
pkg/controller/mpi_job_controller.go after its defaulting, default.go) refuses an MPIJob it cannot
run by posting one Warning Event, reason `ValidationError`, message `Found validation errors: ...`,
and never requeues it: no Service, no pods, no launcher, no condition. The simulated mpi-operator
applies the same rules, in the same words (apimachinery's field.Error and IsDNS1035Label), so a name
or spec that upstream refuses is refused here too. The code is written from reading upstream's,
not copied.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

VALIDATION_ERROR = "ValidationError"
EVENT_MESSAGE_LIMIT = 1024  # mpi-operator's eventMessageLimit (truncateMessage)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1035_ERROR = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                 "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                 "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
CLEAN_POLICIES = ("All", "None", "Running")
IMPLEMENTATIONS = ("Intel", "MPICH", "OpenMPI")
RESTART_POLICIES = ("Never", "OnFailure")
MANAGED_BY = ("kubeflow.org/mpi-operator", "kueue.x-k8s.io/multikueue")
AT_STARTUP, WAIT_FOR_WORKERS_READY = "AtStartup", "WaitForWorkersReady"


def is_dns1035_label(value: str) -> list[str]:
    """apimachinery's IsDNS1035Label: the reasons `value` is not one (empty when it is)."""
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not DNS1035.fullmatch(value):
        errors.append(DNS1035_ERROR)
    return errors


def defaulted(mpijob: Mapping[str, Any]) -> dict[str, Any]:
    """The MPIJob after mpi-operator's SetDefaults_MPIJob (what its controller validates and runs)."""
    job = copy.deepcopy(dict(mpijob))
    spec = job.setdefault("spec", {})
    spec.setdefault("runPolicy", {}).setdefault("cleanPodPolicy", "None")
    spec.setdefault("slotsPerWorker", 1)
    spec["sshAuthMountPath"] = spec.get("sshAuthMountPath") or "/root/.ssh"
    spec["mpiImplementation"] = spec.get("mpiImplementation") or "OpenMPI"
    spec["launcherCreationPolicy"] = spec.get("launcherCreationPolicy") or AT_STARTUP
    replicas = spec.get("mpiReplicaSpecs") or {}
    for role, restart, count in (("Launcher", "OnFailure", 1), ("Worker", "Never", 0)):
        if replicas.get(role) is not None:
            replicas[role]["restartPolicy"] = replicas[role].get("restartPolicy") or restart
            replicas[role].setdefault("replicas", count)
    return job


def _quoted(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def validation_errors(mpijob: Mapping[str, Any]) -> list[str]:
    """ValidateMPIJob of a defaulted MPIJob, as field.Error strings."""
    job = defaulted(mpijob)
    name = (job.get("metadata") or {}).get("name", "")
    spec = job["spec"]
    errors = []
    worker = (spec.get("mpiReplicaSpecs") or {}).get("Worker")
    replicas = worker.get("replicas") if worker else None
    count = replicas if isinstance(replicas, int) and replicas > 0 else 1
    hostname = f"{name}-worker-{count - 1}"
    reasons = is_dns1035_label(hostname)
    if reasons:
        errors.append(f'metadata.name: Invalid value: "{name}": will not able to create pod and service with invalid '
                      f'DNS label "{hostname}": {", ".join(reasons)}')
    specs = spec.get("mpiReplicaSpecs")
    if specs is None:
        errors.append("spec.mpiReplicaSpecs: Required value: must have replica specs")
    else:
        launcher = specs.get("Launcher")
        path = "spec.mpiReplicaSpecs[Launcher]"
        if launcher is None:
            errors.append(f"{path}: Required value: must have Launcher replica spec")
        else:
            errors += _replica_errors(launcher, path)
            if launcher.get("replicas") is not None and launcher["replicas"] != 1:
                errors.append(f"{path}.replicas: Invalid value: {launcher['replicas']}: must be 1")
        if worker is not None:
            path = "spec.mpiReplicaSpecs[Worker]"
            errors += _replica_errors(worker, path)
            if worker.get("replicas") is not None and worker["replicas"] <= 0:
                errors.append(f"{path}.replicas: Invalid value: {worker['replicas']}: must be greater than or equal to 1")
    if spec["slotsPerWorker"] < 0:
        errors.append(f"spec.slotsPerWorker: Invalid value: {spec['slotsPerWorker']}: must be greater than or equal to 0")
    policy = spec["runPolicy"]
    if policy["cleanPodPolicy"] not in CLEAN_POLICIES:
        errors.append(f"spec.runPolicy.cleanPodPolicy: Unsupported value: {_quoted(policy['cleanPodPolicy'])}: "
                      f"supported values: {', '.join(_quoted(v) for v in CLEAN_POLICIES)}")
    for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if policy.get(field) is not None and policy[field] < 0:
            errors.append(f"spec.runPolicy.{field}: Invalid value: {policy[field]}: must be greater than or equal to 0")
    if policy.get("managedBy") is not None and policy["managedBy"] not in MANAGED_BY:
        errors.append(f"spec.runPolicy.managedBy: Unsupported value: {_quoted(policy['managedBy'])}: "
                      f"supported values: {', '.join(_quoted(v) for v in MANAGED_BY)}")
    if spec["mpiImplementation"] not in IMPLEMENTATIONS:
        errors.append(f"spec.mpiImplementation: Unsupported value: {_quoted(spec['mpiImplementation'])}: "
                      f"supported values: {', '.join(_quoted(v) for v in IMPLEMENTATIONS)}")
    return errors


def _replica_errors(replica: Mapping[str, Any], path: str) -> list[str]:
    errors = []
    if replica.get("replicas") is None:
        errors.append(f"{path}.replicas: Required value: must define number of replicas")
    if replica.get("restartPolicy") not in RESTART_POLICIES:
        errors.append(f"{path}.restartPolicy: Unsupported value: {_quoted(replica.get('restartPolicy'))}: "
                      f"supported values: {', '.join(_quoted(v) for v in RESTART_POLICIES)}")
    if not (((replica.get("template") or {}).get("spec") or {}).get("containers")):
        errors.append(f"{path}.template.spec.containers: Required value: must define at least one container")
    return errors


def validation_event_message(errors: list[str]) -> str:
    """The Event message: `Found validation errors: <aggregate>`, truncated like upstream."""
    aggregate = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    message = f"Found validation errors: {aggregate}"
    return message if len(message) <= EVENT_MESSAGE_LIMIT else message[:EVENT_MESSAGE_LIMIT - 3] + "..."


def is_suspended(mpijob: Mapping[str, Any]) -> bool:
    return bool(((mpijob.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
