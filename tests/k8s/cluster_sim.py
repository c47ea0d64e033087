"""The cluster's own controllers, simulated over HTTP against the emulator.

Why it exists: the operator only creates objects and waits for other controllers to move them on.
Here those controllers are played by small watch loops that talk to the emulator through its HTTP
API, as real controllers talk to the apiserver:

* a CSI provisioner (Trident on ANF): binds PVCs to new PVs that start ReadWriteOnce, like the
  volume in TR-4896 that had to be patched to ReadWriteMany, and that name their ANF volume in
  `spec.csi.volumeAttributes.internalName` as Trident's PVs do; restores PVCs whose dataSource is a
  ready VolumeSnapshot (size at least its restoreSize);
* the Job controller: one pod per Job, success or failure with a termination message; like the
  kubelet, a pod whose secret volume names a Secret that does not exist stays Pending with a
  FailedMount Warning Event until the Secret is created;
* the mpi-operator: Created -> Running -> Succeeded/Failed conditions, worker pods (removed when
  training ends, as `cleanPodPolicy: Running` does) and a launcher pod whose termination message is
  the trainer's results JSON; like v0.8.2 it refuses an MPIJob that breaks its rules (`k8s.mpi_rules`:
  a `ValidationError` Event, no pods, no condition), creates no pods while `runPolicy.suspend` is true
  (Kueue admits by unsuspending), and with `launcherCreationPolicy: WaitForWorkersReady` creates the
  launcher only once every worker pod is Ready;
* the kubelet's logs: what each of those containers prints, written into the emulator, which serves
  it as `pods/NAME/log` (followed logs are streamed while the container runs);
* the snapshot controller: VolumeSnapshotContent, readyToUse, restoreSize, creationTime, or an error;
  the class as the external-snapshotter picks it (a named class as is, with its driver; none named:
  the class of the PV's CSI driver marked default, else an error);
* the kubelet and the scheduler when a pod cannot start: container waiting reasons
  (ImagePullBackOff, ErrImagePull, CreateContainerConfigError) or PodScheduled=False/Unschedulable in
  pod status, with their Warning Events on the pod;
* a CSI provisioner of another driver: a StorageClass whose provisioner is not Trident gets PVs of
  that driver.

Every step can be made to fail or stall through `SimKnobs`, keyed by the experiment name (the
`lanex.dev/experiment` label) or by the object's own name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import string
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from k8s import mpi_rules
from k8s.emulator import SYSTEM_USER_AGENT, now_rfc3339

EXPERIMENT_LABEL = "lanex.dev/experiment"
V = TypeVar("V")  # what a knob table maps a name to
TRIDENT = "csi.trident.netapp.io"
DEFAULT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
KUBELET_WAITING = ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError")
log = logging.getLogger("lanex.tests.cluster_sim")

DEFAULT_RESULTS = {"accuracy": 0.9512, "fp": 0.0621, "fn": 0.0544,
                   "checkpoint": "/mnt/experiments/exp/checkpoints/best.pt"}


@dataclasses.dataclass
class SimKnobs:
    """How the simulated cluster behaves. Failure maps: experiment or object name -> message."""

    pv_access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    bind_delay: float = 0.05
    fail_binding: dict[str, str] = dataclasses.field(default_factory=dict)
    job_duration: float = 0.1
    fail_jobs: dict[str, str] = dataclasses.field(default_factory=dict)
    mpijob_start_delay: float = 0.05
    mpijob_duration: float = 0.15
    fail_mpijobs: dict[str, str] = dataclasses.field(default_factory=dict)
    training_results: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RESULTS))
    snapshot_delay: float = 0.05
    fail_snapshots: dict[str, str] = dataclasses.field(default_factory=dict)
    stall_snapshots: set[str] = dataclasses.field(default_factory=set)
    # No mpi-operator runs: MPIJobs are stored but nothing ever acts on them (no condition, no pods).
    mpi_operator_running: bool = True
    # mpi-operator refuses these MPIJobs: a Warning Event ValidationError "Found validation errors: <message>",
    # no condition and no launcher, never retried (as its syncHandler does).
    refuse_mpijobs: dict[str, str] = dataclasses.field(default_factory=dict)
    # Pods of these Jobs/MPIJobs cannot start while the entry stays: name -> (reason, message) with reason one
    # of ImagePullBackOff, ErrImagePull, CreateContainerConfigError (kubelet) or Unschedulable (scheduler).
    stuck_pods: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # "Kind", "Kind/experiment" or "Kind/object-name": hold the next step of those objects;
    # "MPIJob.running/experiment": hold training midway, its pods running and their logs open.
    paused: set[str] = dataclasses.field(default_factory=set)
    # Worker pods turn Ready this long after they start; experiments or MPIJobs named here stay not Ready.
    worker_ready_delay: float = 0.0
    unready_workers: set[str] = dataclasses.field(default_factory=set)

    def failure(self, table: Mapping[str, V], obj: Mapping[str, Any]) -> V | None:
        meta = obj.get("metadata", {})
        for key in (meta.get("name"), (meta.get("labels") or {}).get(EXPERIMENT_LABEL)):
            if key is not None and key in table:
                return table[key]
        return None

    def matches(self, names: set[str], obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return meta.get("name") in names or (meta.get("labels") or {}).get(EXPERIMENT_LABEL) in names


def _suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=5))


def parse_quantity(value: str) -> int:
    """Bytes in a Kubernetes quantity such as 100Gi, 1T or 5368709120."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * units[suffix])
    return int(float(value))


def _main_container(pod: Mapping[str, Any]) -> str:
    """The name of a pod's first container (the one the simulated controllers run)."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("name", "main"))


def trident_csi(pv_name: str) -> dict[str, Any]:
    """`spec.csi` of a PV that Trident provisioned on Azure NetApp Files: `internalName` is the ANF
    volume's name (Trident's default naming: the PV name), which the storage-tier code maps to ARM."""
    return {"driver": "csi.trident.netapp.io", "volumeHandle": pv_name,
            "volumeAttributes": {"backendUUID": "a1b2c3d4-0000-4000-8000-000000000001", "internalName": pv_name,
                                 "name": pv_name, "protocol": "file",
                                 "storage.kubernetes.io/csiProvisionerIdentity": "1700000000000-trident"}}


class ClusterSimulation:
    """Runs the simulated controllers as tasks on the emulator's event loop, over HTTP."""

    def __init__(self, base_url: str, knobs: SimKnobs | None = None,
                 write_log: Callable[[str, str, str, str], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.knobs = knobs or SimKnobs()
        self._write_log = write_log  # (namespace, pod, container, text): the kubelet's container output
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[tuple[str, str]] = set()
        self._done: set[tuple[str, str]] = set()
        self.errors: list[str] = []
        # What the simulated mpi-operator did, in order: ("refused" | "suspended" | "resumed" |
        # "waiting-for-workers" | "launcher-created", MPIJob name) and ("worker-ready", pod name).
        self.history: list[tuple[str, str]] = []

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": f"{SYSTEM_USER_AGENT}/1"})
        watches = {
            "/api/v1/persistentvolumeclaims": self._on_pvc,
            "/apis/batch/v1/jobs": self._on_job,
            "/apis/kubeflow.org/v2beta1/mpijobs": self._on_mpijob,
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshots": self._on_snapshot,
        }
        for path, handler in watches.items():
            self._tasks.append(asyncio.create_task(self._watch(path, handler)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()

    # ---- HTTP plumbing

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        assert self._session is not None
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self._session.request(method, self.base_url + path, data=None if body is None else json.dumps(body),
                                         headers=headers) as response:
            payload = await response.json()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {payload.get('message')}")
            return payload

    async def _watch(self, path: str, handler: Any) -> None:
        """List-then-watch with resumption, dispatching every object state to a level-triggered handler."""
        assert self._session is not None
        since = ""
        while True:
            try:
                url = f"{self.base_url}{path}?watch=true" + (f"&resourceVersion={since}" if since else "")
                async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            since = ""
                            break
                        obj = event["object"]
                        since = obj["metadata"]["resourceVersion"]
                        if event["type"] != "DELETED":
                            self._spawn(handler, obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the emulator restarts watches; keep going like a controller would
                log.debug("watch %s broke: %r", path, exc)
                await asyncio.sleep(0.05)

    def _spawn(self, handler: Any, obj: dict[str, Any]) -> None:
        key = (obj["kind"], obj["metadata"]["uid"])
        if key in self._busy or key in self._done:
            return
        self._busy.add(key)

        async def run() -> None:
            try:
                finished = await handler(obj)
                if finished:
                    self._done.add(key)
            except Exception as exc:
                self.errors.append(f"{key}: {exc!r}")
                log.warning("simulated controller failed on %s: %r", key, exc)
            finally:
                self._busy.discard(key)

        self._tasks.append(asyncio.create_task(run()))

    async def _hold(self, obj: Mapping[str, Any], stage: str = "") -> None:
        """Hold this controller's next step while `knobs.paused` names its kind, `Kind/experiment` or
        `Kind/name` (with a `stage`: `Kind.stage/experiment` or `Kind.stage/name` only)."""
        kind = f"{obj['kind']}.{stage}" if stage else obj["kind"]
        meta = obj.get("metadata") or {}
        keys = {f"{kind}/{(meta.get('labels') or {}).get(EXPERIMENT_LABEL)}", f"{kind}/{meta.get('name')}"}
        if not stage:
            keys.add(kind)
        while keys & self.knobs.paused:
            await asyncio.sleep(0.02)

    async def event(self, obj: Mapping[str, Any], reason: str, message: str, type_: str = "Warning",
                    component: str = "cluster-sim") -> None:
        """A core/v1 Event about `obj`, as client-go's recorder writes it (`component`: the recording controller)."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        await self.request("POST", f"/api/v1/namespaces/{namespace}/events", {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "Pod"),
                               "name": meta["name"], "namespace": namespace, "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion", "")},
            "reason": reason, "message": message, "type": type_, "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
        }, content_type="application/json")

    # ---- CSI provisioner

    async def _on_pvc(self, pvc: dict[str, Any]) -> bool:
        if (pvc.get("status") or {}).get("phase") == "Bound" or pvc["metadata"].get("deletionTimestamp"):
            return True
        await self._hold(pvc)
        await asyncio.sleep(self.knobs.bind_delay)
        meta, spec = pvc["metadata"], pvc.get("spec", {})
        namespace, name = meta["namespace"], meta["name"]
        try:  # like a CSI provisioner, serve only claims of a storage class that exists
            storage_class = await self.request("GET", f"/apis/storage.k8s.io/v1/storageclasses/"
                                                      f"{spec.get('storageClassName')}")
        except RuntimeError:
            return False
        driver = storage_class.get("provisioner") or TRIDENT
        failure = self.knobs.failure(self.knobs.fail_binding, pvc)
        if failure:
            await self.event(pvc, "ProvisioningFailed", failure)
            return True
        size = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
        source = spec.get("dataSource") or spec.get("dataSourceRef")
        if source and source.get("kind") == "VolumeSnapshot":
            status = await self._ready_snapshot(pvc, namespace, source["name"])
            if status is None:
                return True
            if parse_quantity(size) < parse_quantity(status.get("restoreSize", "0")):
                await self.event(pvc, "ProvisioningFailed", f"requested volume size {size} is less than the "
                                                            f"size {status['restoreSize']} of the snapshot")
                return True
        pv_name = f"pvc-{meta['uid']}"
        await self.request("POST", "/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
            "spec": {"capacity": {"storage": size}, "accessModes": list(self.knobs.pv_access_modes),
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": spec.get("storageClassName"),
                     "volumeMode": "Filesystem",
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace,
                                  "name": name, "uid": meta["uid"]},
                     "csi": trident_csi(pv_name) if driver == TRIDENT else {"driver": driver, "volumeHandle": pv_name}},
        }, content_type="application/json")
        await self.request("PATCH", f"/api/v1/persistentvolumes/{pv_name}/status", {"status": {"phase": "Bound"}})
        await self.request("PATCH", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                           {"spec": {"volumeName": pv_name}})
        await self.request("PATCH", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}/status", {
            "status": {"phase": "Bound", "accessModes": list(self.knobs.pv_access_modes),
                       "capacity": {"storage": size}}})
        return True

    async def _ready_snapshot(self, pvc: dict[str, Any], namespace: str, name: str,
                              patience: float = 30.0) -> dict[str, Any] | None:
        """Wait, like the provisioner does, for the restore source to be ready; None when it never is."""
        path = f"/apis/snapshot.storage.k8s.io/v1/namespaces/{namespace}/volumesnapshots/{name}"
        waited, reported = 0.0, False
        while waited < patience:
            try:
                status = (await self.request("GET", path)).get("status") or {}
                if status.get("readyToUse"):
                    return status
            except RuntimeError:
                if not reported:
                    await self.event(pvc, "ProvisioningFailed", f"volumesnapshot {name} not found")
                    reported = True
            await asyncio.sleep(0.1)
            waited += 0.1
        return None

    # ---- Job controller

    async def _on_job(self, job: dict[str, Any]) -> bool:
        status = job.get("status") or {}
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions") or []):
            return True
        await self._hold(job)
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        base = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status"
        start = now_rfc3339()
        await self.request("PATCH", base, {"status": {"active": 1, "startTime": start}})
        stuck = self.knobs.failure(self.knobs.stuck_pods, job)
        pod = await self._pod(job, f"{name}-{_suffix()}", {"batch.kubernetes.io/job-name": name, "job-name": name,
                                                          "batch.kubernetes.io/controller-uid": meta["uid"]},
                              stuck=stuck)
        await self._mount_secrets(pod)
        await self._while_stuck(job, [pod])
        self.print(pod, "lanex data: preparing the dataset in /mnt/tusimple_data\n")
        await asyncio.sleep(self.knobs.job_duration)
        await self._hold(job)
        failure = self.knobs.failure(self.knobs.fail_jobs, job)
        if failure:
            self.print(pod, f"error: {failure}\n")
            await self._terminate(pod, exit_code=1, message=failure)
            await self.request("PATCH", base, {"status": {"active": 0, "failed": 1 + job["spec"].get("backoffLimit", 0),
                                                          "conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit", "lastTransitionTime": now_rfc3339()}]}})
        else:
            self.print(pod, "prepared /mnt/tusimple_data\n")
            await self._terminate(pod, exit_code=0, message="prepared /mnt/tusimple_data")
            await self.request("PATCH", base, {"status": {"active": 0, "succeeded": 1, "completionTime": now_rfc3339(),
                                                          "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now_rfc3339()},
                {"type": "Complete", "status": "True", "lastTransitionTime": now_rfc3339()}]}})
        return True

    async def _mount_secrets(self, pod: Mapping[str, Any]) -> None:
        """The kubelet's mount of secret volumes: Pending + FailedMount while a Secret is missing."""
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        waiting = False
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            secret = volume.get("secret") or {}
            if not secret.get("secretName") or secret.get("optional"):
                continue
            while True:
                try:
                    await self.request("GET", f"/api/v1/namespaces/{meta['namespace']}/secrets/{secret['secretName']}")
                    break
                except RuntimeError:
                    if not waiting:
                        waiting = True
                        await self.request("PATCH", path, {"status": {"phase": "Pending", "containerStatuses": [{
                            "name": _main_container(pod), "ready": False, "restartCount": 0,
                            "state": {"waiting": {"reason": "ContainerCreating"}}}]}})
                        await self.event(pod, "FailedMount", f'MountVolume.SetUp failed for volume "{volume["name"]}"'
                                                             f' : secret "{secret["secretName"]}" not found')
                    await asyncio.sleep(0.1)
        if waiting:
            await self.request("PATCH", path, {"status": {"phase": "Running", "containerStatuses": None}})

    def print(self, pod: Mapping[str, Any], text: str) -> None:
        """What the pod's main container writes to its log."""
        if self._write_log is not None:
            self._write_log(pod["metadata"]["namespace"], pod["metadata"]["name"], _main_container(pod), text)

    async def _pod(self, owner: dict[str, Any], name: str, labels: dict[str, str],
                   role: str = "Launcher", stuck: tuple[str, str] | None = None) -> dict[str, Any]:
        meta = owner["metadata"]
        template = self._pod_template(owner, role)
        pod = await self.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "ownerReferences": [{
                "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True}]},
            "spec": template.get("spec") or {"containers": [{"name": "main", "image": "busybox"}]},
        }, content_type="application/json")
        if stuck is not None:
            await self._stuck(pod, *stuck)
            return pod
        await self.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{name}/status",
                           {"status": {"phase": "Running", "startTime": now_rfc3339()}})
        return pod

    async def _stuck(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        """The pod cannot start: the scheduler finds no node (PodScheduled=False/Unschedulable), or the kubelet
        cannot create its main container (a waiting reason), each with its Warning Event on the pod."""
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        now = now_rfc3339()
        if reason == "Unschedulable":
            await self.request("PATCH", path, {"status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastProbeTime": None, "lastTransitionTime": now}]}})
            await self.event(pod, "FailedScheduling", message, component="default-scheduler")
            return
        assert reason in KUBELET_WAITING, reason
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        await self.request("PATCH", path, {"status": {"phase": "Pending", "startTime": now, "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
             "message": f"containers with unready status: [{_main_container(pod)}]", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
             "message": f"containers with unready status: [{_main_container(pod)}]", "lastTransitionTime": now}],
            "containerStatuses": [{"name": _main_container(pod), "image": container.get("image", ""), "imageID": "",
                                   "ready": False, "started": False, "restartCount": 0,
                                   "state": {"waiting": {"reason": reason, "message": message}}}]}})
        await self.event(pod, "Failed", f"Error: {reason}" if reason != "CreateContainerConfigError"
                         else f"Error: {message}", component="kubelet")

    async def _while_stuck(self, owner: Mapping[str, Any], pods: list[dict[str, Any]]) -> None:
        """Hold while the owner's pods are stuck (`knobs.stuck_pods`); then they start, as after a fix."""
        if self.knobs.failure(self.knobs.stuck_pods, owner) is None:
            return
        while self.knobs.failure(self.knobs.stuck_pods, owner) is not None:
            await asyncio.sleep(0.05)
        for pod in pods:
            meta = pod["metadata"]
            await self.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {
                "status": {"phase": "Running", "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}],
                    "containerStatuses": [{"name": _main_container(pod), "ready": True, "started": True,
                                           "restartCount": 0, "state": {"running": {"startedAt": now_rfc3339()}}}]}})

    @staticmethod
    def _pod_template(owner: Mapping[str, Any], role: str) -> Mapping[str, Any]:
        spec = owner.get("spec") or {}
        if "template" in spec:
            return spec["template"]
        replica = (spec.get("mpiReplicaSpecs") or {}).get(role) or {}
        return replica.get("template") or {}

    async def _terminate(self, pod: Mapping[str, Any], exit_code: int, message: str) -> None:
        meta = pod["metadata"]
        await self.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {
            "status": {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [{
                "name": _main_container(pod), "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                         "message": message, "finishedAt": now_rfc3339()}}}]}})

    # ---- mpi-operator

    async def _on_mpijob(self, mpijob: dict[str, Any]) -> bool:
        conditions = (mpijob.get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in conditions):
            return True
        await self._hold(mpijob)
        if not self.knobs.mpi_operator_running:
            return False  # nothing watches MPIJobs: the object just sits there
        refusal = self.knobs.failure(self.knobs.refuse_mpijobs, mpijob)
        if refusal:  # its syncHandler: record the Event, do not requeue, set no condition
            await self.event(mpijob, "ValidationError", f"Found validation errors: {refusal}",
                             component="mpi-job-controller")
            return True
        stuck = self.knobs.failure(self.knobs.stuck_pods, mpijob)
        meta = mpijob["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        errors = mpi_rules.validation_errors(mpijob)
        if errors:  # upstream: one Warning Event, no Service, no pods, no condition, never requeued
            await self.event(mpijob, mpi_rules.VALIDATION_ERROR, mpi_rules.validation_event_message(errors))
            self.history.append(("refused", name))
            return True
        mpijob = mpi_rules.defaulted(mpijob)
        base = f"/apis/kubeflow.org/v2beta1/namespaces/{namespace}/mpijobs/{name}/status"
        workers = mpijob["spec"]["mpiReplicaSpecs"]["Worker"].get("replicas", 1)
        created = {"type": "Created", "status": "True", "reason": "MPIJobCreated",
                   "message": f"MPIJob {namespace}/{name} is created.", "lastTransitionTime": now_rfc3339()}
        resumed = await self._while_suspended(mpijob, base, created)
        await self.request("PATCH", base, {"status": {"conditions": [created, *resumed]}})
        await asyncio.sleep(self.knobs.mpijob_start_delay)
        job_labels = {"training.kubeflow.org/job-name": name, "training.kubeflow.org/operator-name": "mpi-operator"}
        worker_pods = [await self._pod(mpijob, f"{name}-worker-{index}", {
            **job_labels, "training.kubeflow.org/job-role": "worker", "training.kubeflow.org/replica-index": str(index)},
            role="Worker", stuck=stuck) for index in range(workers)]
        wait_for_workers = mpijob["spec"]["launcherCreationPolicy"] == mpi_rules.WAIT_FOR_WORKERS_READY
        if wait_for_workers:  # upstream: no launcher Job until every worker pod is Ready
            self.history.append(("waiting-for-workers", name))
            await self._while_stuck(mpijob, worker_pods)  # a worker that cannot start is never Ready
            await asyncio.gather(*(self._become_ready(mpijob, worker) for worker in worker_pods))
        launcher = await self._pod(mpijob, f"{name}-launcher-{_suffix()}", {
            **job_labels, "training.kubeflow.org/job-role": "launcher"},
            stuck=self.knobs.failure(self.knobs.stuck_pods, mpijob))
        self.history.append(("launcher-created", name))
        await self._while_stuck(mpijob, [*worker_pods, launcher])  # no Running condition until they start
        for index, worker in enumerate(worker_pods):  # a container that never started prints nothing
            self.print(worker, f"Server listening on 0.0.0.0 port 22 (worker {index})\n")
        if not wait_for_workers:  # AtStartup: the launcher runs while the workers are still coming up
            await asyncio.gather(*(self._become_ready(mpijob, worker) for worker in worker_pods))
        self.print(launcher, f"lanex launch: mpirun -np {workers} --hostfile /etc/mpi/hostfile lanex train\n")
        running = {"type": "Running", "status": "True", "reason": "MPIJobRunning",
                   "message": f"MPIJob {namespace}/{name} is running.", "lastTransitionTime": now_rfc3339()}
        await self.request("PATCH", base, {"status": {"startTime": now_rfc3339(), "conditions": [created, *resumed, running],
                                                      "replicaStatuses": {"Launcher": {"active": 1},
                                                                          "Worker": {"active": workers}}}})
        await asyncio.sleep(self.knobs.mpijob_duration / 2)
        self.print(launcher, json.dumps({"epoch": 1, "train_loss": 0.41, "images_per_second": 96.0}) + "\n")
        await self._hold(mpijob, stage="running")
        await asyncio.sleep(self.knobs.mpijob_duration / 2)
        await self._hold(mpijob)
        failure = self.knobs.failure(self.knobs.fail_mpijobs, mpijob)
        done = dict(running, status="False", lastTransitionTime=now_rfc3339())
        for worker in worker_pods:  # cleanPodPolicy Running: the workers go when training ends
            await self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{worker['metadata']['name']}")
        if failure:
            self.print(launcher, f"{failure}\n")
            await self._terminate(launcher, exit_code=1, message=failure)
            final = {"type": "Failed", "status": "True", "reason": "MPIJobFailed",
                     "message": f"MPIJob {namespace}/{name} has failed because 1 Launcher replica(s) failed.",
                     "lastTransitionTime": now_rfc3339()}
            replicas = {"Launcher": {"failed": 1}, "Worker": {}}
        else:
            self.print(launcher, json.dumps(self.knobs.training_results) + "\n")
            await self._terminate(launcher, exit_code=0, message=json.dumps(self.knobs.training_results))
            final = {"type": "Succeeded", "status": "True", "reason": "MPIJobSucceeded",
                     "message": f"MPIJob {namespace}/{name} successfully completed.", "lastTransitionTime": now_rfc3339()}
            replicas = {"Launcher": {"succeeded": 1}, "Worker": {}}
        await self.request("PATCH", base, {"status": {"completionTime": now_rfc3339(), "conditions": [created, *resumed, done, final],
                                                      "replicaStatuses": replicas}})
        return True

    async def _while_suspended(self, mpijob: Mapping[str, Any], base: str,
                               created: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Upstream's suspended MPIJob: Created, Suspended, Running False, and no pods until it is
        unsuspended (by Kueue's admission); then the `Suspended False MPIJobResumed` condition to keep."""
        if not mpi_rules.is_suspended(mpijob):
            return []
        meta = mpijob["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        suspended = {"type": "Suspended", "status": "True", "reason": "MPIJobSuspended", "message": "MPIJob suspended",
                     "lastTransitionTime": now_rfc3339()}
        waiting = {"type": "Running", "status": "False", "reason": "MPIJobSuspended",
                   "message": f"MPIJob {namespace}/{name} is suspended.", "lastTransitionTime": now_rfc3339()}
        await self.request("PATCH", base, {"status": {"conditions": [dict(created), suspended, waiting]}})
        await self.event(mpijob, "MPIJobSuspended", "MPIJob suspended", type_="Normal")
        self.history.append(("suspended", name))
        path = f"/apis/kubeflow.org/v2beta1/namespaces/{namespace}/mpijobs/{name}"
        while mpi_rules.is_suspended(await self.request("GET", path)):
            await asyncio.sleep(0.05)
        self.history.append(("resumed", name))
        await self.event(mpijob, "MPIJobResumed", "MPIJob resumed", type_="Normal")
        return [dict(suspended, status="False", reason="MPIJobResumed", message="MPIJob resumed",
                     lastTransitionTime=now_rfc3339())]

    async def _become_ready(self, mpijob: Mapping[str, Any], pod: Mapping[str, Any]) -> None:
        """A worker pod turns Ready (its sshd listens) unless `knobs.unready_workers` holds its experiment."""
        await asyncio.sleep(self.knobs.worker_ready_delay)
        while self.knobs.matches(self.knobs.unready_workers, mpijob):
            await asyncio.sleep(0.02)
        meta = pod["metadata"]
        await self.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {"status": {
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}],
            "containerStatuses": [{"name": _main_container(pod), "ready": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now_rfc3339()}}}]}})
        self.history.append(("worker-ready", meta["name"]))

    # ---- snapshot controller

    async def _on_snapshot(self, snapshot: dict[str, Any]) -> bool:
        status = snapshot.get("status") or {}
        if status.get("readyToUse") or snapshot["metadata"].get("deletionTimestamp"):
            return True
        await self._hold(snapshot)
        await asyncio.sleep(self.knobs.snapshot_delay)
        meta = snapshot["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        base = f"/apis/snapshot.storage.k8s.io/v1/namespaces/{namespace}/volumesnapshots/{name}/status"
        if self.knobs.matches(self.knobs.stall_snapshots, snapshot):
            await self.request("PATCH", base, {"status": {"readyToUse": False}})
            return True
        failure = self.knobs.failure(self.knobs.fail_snapshots, snapshot)
        if failure:
            await self.request("PATCH", base, {"status": {"readyToUse": False, "error": {
                "message": failure, "time": now_rfc3339()}}})
            return True
        pvc_name = snapshot["spec"]["source"]["persistentVolumeClaimName"]
        try:
            pvc = await self.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{pvc_name}")
        except RuntimeError as exc:
            await self.request("PATCH", base, {"status": {"readyToUse": False, "error": {
                "message": f"failed to get input parameters to create snapshot {name}: {exc}", "time": now_rfc3339()}}})
            return True
        size = ((pvc.get("status") or {}).get("capacity") or {}).get("storage", "1Gi")
        klass, problem = await self._snapshot_class(snapshot, pvc)
        if problem:
            await self.request("PATCH", base, {"status": {"readyToUse": False, "error": {
                "message": problem, "time": now_rfc3339()}}})
            return True
        content = f"snapcontent-{meta['uid']}"
        await self.request("POST", "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": content},
            "spec": {"deletionPolicy": klass.get("deletionPolicy", "Delete"), "driver": klass["driver"],
                     "source": {"volumeHandle": pvc.get("spec", {}).get("volumeName", "")},
                     "volumeSnapshotClassName": klass["metadata"]["name"],
                     "volumeSnapshotRef": {"kind": "VolumeSnapshot", "namespace": namespace, "name": name,
                                           "uid": meta["uid"]}},
        }, content_type="application/json")
        await self.request("PATCH", base, {"status": {
            "boundVolumeSnapshotContentName": content, "creationTime": now_rfc3339(),
            "readyToUse": True, "restoreSize": size}})
        return True

    async def _snapshot_class(self, snapshot: dict[str, Any],
                              pvc: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The class a snapshot gets, as the external-snapshotter's common controller picks it: a named class is
        used as is and its driver takes the snapshot (a driver that does not own the volume fails it); with none
        named, the one class of the PV's CSI driver marked default is written into the snapshot's spec."""
        meta = snapshot["metadata"]
        volume = (pvc.get("spec") or {}).get("volumeName") or ""
        try:
            pv = await self.request("GET", f"/api/v1/persistentvolumes/{volume}")
        except RuntimeError as exc:
            return {}, f"Failed to get input parameters to create snapshot {meta['name']}: {exc}"
        pv_driver = ((pv.get("spec") or {}).get("csi") or {}).get("driver", "")
        named = (snapshot.get("spec") or {}).get("volumeSnapshotClassName")
        if named:
            try:
                klass = await self.request("GET", f"/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses/{named}")
            except RuntimeError as exc:
                return {}, f"Failed to get input parameters to create snapshot {meta['name']}: {exc}"
            if klass.get("driver") != pv_driver:  # the sidecar of the class's driver does not know the volume
                return klass, (f"Failed to check and update snapshot content: failed to take snapshot of the volume "
                               f"{volume}: \"rpc error: code = NotFound desc = volume {volume} not found by driver "
                               f"{klass.get('driver')}\"")
            return klass, None
        classes = (await self.request("GET", "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses")).get("items")
        defaults = [c for c in classes or [] if c.get("driver") == pv_driver
                    and (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"]
        if len(defaults) != 1:
            detail = ("cannot find default snapshot class" if not defaults
                      else f"{len(defaults)} default snapshot classes were found")
            await self.event(snapshot, "SetDefaultSnapshotClassFailed",
                             f"Failed to set default snapshot class with error {detail}", component="snapshot-controller")
            return {}, f"Failed to set default snapshot class with error {detail}"
        namespace = meta["namespace"]
        await self.request("PATCH", f"/apis/snapshot.storage.k8s.io/v1/namespaces/{namespace}/volumesnapshots/"
                                    f"{meta['name']}", {"spec": {"volumeSnapshotClassName": defaults[0]["metadata"]["name"]}})
        return defaults[0], None
