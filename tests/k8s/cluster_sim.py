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
  the trainer's results JSON; the launcher logs the trainer's `LANEX_PROGRESS {...}` lines (see
  PROGRESS_CONTRACT: every step, a validation per epoch) and, as mpi-operator's launcher Job does
  (v0.3+: a batch/v1 Job with the MPIJob's `runPolicy.backoffLimit`), a deleted launcher pod is
  replaced by a new one that resumes from the last checkpoint (the start of its epoch), counted as
  a failure; more failures than the backoff limit fail the MPIJob;
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
import base64
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import string
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from k8s import mpi_rules
from k8s.emulator import SYSTEM_USER_AGENT, now_rfc3339

EXPERIMENT_LABEL = "lanex.dev/experiment"
V = TypeVar("V")  # what a knob table maps a name to
TRIDENT = "csi.trident.netapp.io"
DEFAULT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
KUBELET_WAITING = ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError")
CRASH_LOOP = "CrashLoopBackOff"  # the container exits non-zero and is restarted in place, again and again
VOLUME_TROUBLES = {"FailedMount": "kubelet", "FailedAttachVolume": "attachdetach-controller"}  # reason: recorder
CRASH_LOOP_PERIOD = 0.5  # seconds between simulated restarts (the kubelet's back-off, compressed)
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
    # of ImagePullBackOff, ErrImagePull, CreateContainerConfigError, CrashLoopBackOff (kubelet; the message is
    # what the crashing container says, its restarts counted up), Unschedulable (scheduler), FailedMount
    # (kubelet) or FailedAttachVolume (attach/detach controller), the last two as Warning Events only.
    stuck_pods: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # "Kind", "Kind/experiment" or "Kind/object-name": hold the next step of those objects;
    # "MPIJob.running/experiment": hold training midway, its pods running and their logs open.
    paused: set[str] = dataclasses.field(default_factory=set)
    # Worker pods turn Ready this long after they start; experiments or MPIJobs named here stay not Ready.
    worker_ready_delay: float = 0.0
    unready_workers: set[str] = dataclasses.field(default_factory=set)
    # The launcher's progress lines: epochs come from the trainer's `--epochs`; each epoch has
    # `steps_per_epoch` optimizer steps, `step_seconds` apart (None: mpijob_duration spread over all).
    steps_per_epoch: int = 2
    step_seconds: float | None = None
    # What the trainer reports about its speed (ETA = steps left x reported_step_seconds, None: step_seconds).
    reported_step_seconds: float | None = None
    images_per_second: float = 96.0
    # Experiment name -> validation accuracy after each epoch (sweeps' early stopping reads them);
    # unnamed experiments climb from 0.5 towards training_results' accuracy.
    val_accuracy: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # Experiment name -> the results JSON of its launcher (default: training_results).
    results_for: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Jobs labelled app.kubernetes.io/component with one of these run their container's command for real (a
    # `lanex` command of this venv), with its env and the Secret keys it references, as a kubelet would; the
    # termination message is what the command wrote to its terminationMessagePath.
    real_job_components: set[str] = dataclasses.field(default_factory=set)
    # Experiments whose launcher hangs: no more log lines, the MPIJob stays Running, until the name is
    # removed (it goes on where it stopped) or the launcher pod is deleted (a hang belongs to one
    # process: the replacement does not inherit it, so the sim drops the name when it replaces the pod).
    stall_logging: set[str] = dataclasses.field(default_factory=set)

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
        self._deleted_pods: set[tuple[str, str]] = set()  # (namespace, name), fed by a pod watch
        self._deleted_mpijobs: set[str] = set()  # uids of deleted MPIJobs (a sweep's early stopping deletes them)
        self.mpijobs_running: dict[str, int] = {}  # namespace -> MPIJobs between Created and their end, now
        self.mpijobs_running_peak: dict[str, int] = {}  # namespace -> the most at any moment
        self.errors: list[str] = []
        # What the simulated mpi-operator did, in order: ("refused" | "suspended" | "resumed" |
        # "waiting-for-workers" | "launcher-created", MPIJob name) and ("worker-ready", pod name).
        self.history: list[tuple[str, str]] = []
        self.launcher_restarts: dict[str, int] = {}  # MPIJob name -> launcher pods replaced

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
        self._tasks.append(asyncio.create_task(self._watch("/api/v1/pods", None, deleted=self._on_pod_deleted)))
        self._tasks.append(asyncio.create_task(self._watch(
            "/apis/kubeflow.org/v2beta1/mpijobs", None,
            deleted=lambda obj: self._deleted_mpijobs.add(obj["metadata"]["uid"]))))

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

    async def _watch(self, path: str, handler: Any | None, deleted: Callable[[dict[str, Any]], None] | None = None) -> None:
        """List-then-watch with resumption, dispatching every object state to a level-triggered handler
        (and deletions to `deleted`)."""
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
                            if handler is not None:
                                self._spawn(handler, obj)
                        elif deleted is not None:
                            deleted(obj)
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
        while keys & self.knobs.paused and meta.get("uid") not in self._deleted_mpijobs:
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
        done_message = "prepared /mnt/tusimple_data"
        if (meta.get("labels") or {}).get("app.kubernetes.io/component") in self.knobs.real_job_components:
            code, done_message = await self._run_for_real(pod)
            failure = (done_message or f"exit code {code}") if code != 0 else None
        else:
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
            self.print(pod, done_message + "\n")
            await self._terminate(pod, exit_code=0, message=done_message)
            await self.request("PATCH", base, {"status": {"active": 0, "succeeded": 1, "completionTime": now_rfc3339(),
                                                          "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now_rfc3339()},
                {"type": "Complete", "status": "True", "lastTransitionTime": now_rfc3339()}]}})
        return True

    async def _run_for_real(self, pod: Mapping[str, Any]) -> tuple[int, str]:
        """The kubelet running the pod's container: its command (`lanex ...` of this venv) with its env, each
        secretKeyRef resolved from the Secret (an optional key that is missing is left out); returns the exit
        code and the termination message (the file at terminationMessagePath, else the output's tail)."""
        container = pod["spec"]["containers"][0]
        namespace = pod["metadata"]["namespace"]
        env = {**os.environ}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef") or {}
            try:
                secret = await self.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
            except RuntimeError:
                secret = {}
            value = (secret.get("data") or {}).get(ref.get("key"))
            if value is not None:
                env[item["name"]] = base64.b64decode(value).decode()
        with tempfile.TemporaryDirectory() as folder:
            log_path = os.path.join(folder, "termination-log")
            command = [str(Path(sys.executable).parent / "lanex") if part == "lanex" else part
                       for part in container["command"]]
            command = [log_path if part == container.get("terminationMessagePath", "/dev/termination-log") else part
                       for part in command]
            process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE,
                                                           stderr=asyncio.subprocess.STDOUT)
            output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
            text = output.decode(errors="replace")
            self.print(pod, text)
            message = Path(log_path).read_text() if os.path.exists(log_path) else text[-4096:]
        return int(process.returncode or 0), message.strip()

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
        assert reason in (*KUBELET_WAITING, CRASH_LOOP, *VOLUME_TROUBLES), reason
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        # A volume that cannot be attached or mounted leaves the container creating; only an Event says why.
        waiting = {"reason": "ContainerCreating"} if reason in VOLUME_TROUBLES else {"reason": reason, "message": message}
        if reason == CRASH_LOOP:
            waiting["message"] = f"back-off 10s restarting failed container={_main_container(pod)} pod={meta['name']}"
        await self.request("PATCH", path, {"status": {
            "phase": "Running" if reason == CRASH_LOOP else "Pending", "startTime": now, "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                 "message": f"containers with unready status: [{_main_container(pod)}]", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "message": f"containers with unready status: [{_main_container(pod)}]", "lastTransitionTime": now}],
            "containerStatuses": [self._crashed(pod, message, 1) if reason == CRASH_LOOP else {
                "name": _main_container(pod), "image": container.get("image", ""), "imageID": "", "ready": False,
                "started": False, "restartCount": 0, "state": {"waiting": waiting}}]}})
        if reason in VOLUME_TROUBLES:
            await self.event(pod, reason, message, component=VOLUME_TROUBLES[reason])
        elif reason == CRASH_LOOP:
            await self.event(pod, "BackOff", "Back-off restarting failed container", component="kubelet")
        else:
            await self.event(pod, "Failed", f"Error: {reason}" if reason != "CreateContainerConfigError"
                             else f"Error: {message}", component="kubelet")

    @staticmethod
    def _crashed(pod: Mapping[str, Any], message: str, restarts: int) -> dict[str, Any]:
        """The status of a main container that exited with `message` `restarts` times and now waits to restart."""
        name = _main_container(pod)
        return {"name": name, "ready": False, "started": False, "restartCount": restarts,
                "state": {"waiting": {"reason": CRASH_LOOP, "message": f"back-off restarting failed container={name}"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message,
                                             "finishedAt": now_rfc3339()}}}

    async def _while_stuck(self, owner: Mapping[str, Any], pods: list[dict[str, Any]]) -> None:
        """Hold while the owner's pods are stuck (`knobs.stuck_pods`); then they start, as after a fix."""
        if self.knobs.failure(self.knobs.stuck_pods, owner) is None:
            return
        restarts, last_restart = 1, time.monotonic()
        while (stuck := self.knobs.failure(self.knobs.stuck_pods, owner)) is not None:
            await asyncio.sleep(0.05)
            if stuck[0] == CRASH_LOOP and time.monotonic() - last_restart >= CRASH_LOOP_PERIOD:
                restarts, last_restart = restarts + 1, time.monotonic()
                for pod in pods:  # the kubelet restarted it; it crashed again
                    meta = pod["metadata"]
                    await self.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                       {"status": {"containerStatuses": [self._crashed(pod, stuck[1], restarts)]}})
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
        self.print(launcher, json.dumps({"epoch": 1, "train_loss": 0.41, "images_per_second": 96.0}) + "\n")
        running = {"type": "Running", "status": "True", "reason": "MPIJobRunning",
                   "message": f"MPIJob {namespace}/{name} is running.", "lastTransitionTime": now_rfc3339()}
        await self.request("PATCH", base, {"status": {"startTime": now_rfc3339(), "conditions": [created, *resumed, running],
                                                      "replicaStatuses": {"Launcher": {"active": 1},
                                                                          "Worker": {"active": workers}}}})
        namespace_count = self.mpijobs_running.get(namespace, 0) + 1
        self.mpijobs_running[namespace] = namespace_count
        self.mpijobs_running_peak[namespace] = max(self.mpijobs_running_peak.get(namespace, 0), namespace_count)
        try:
            launcher, launcher_failures = await self._train(mpijob, launcher, base, created, running)
        finally:
            self.mpijobs_running[namespace] -= 1
        if meta["uid"] in self._deleted_mpijobs:
            return True  # deleted while training: its pods went with it (garbage collector); nothing to report
        failure = self.knobs.failure(self.knobs.fail_mpijobs, mpijob)
        backoff_limit = int((mpijob["spec"].get("runPolicy") or {}).get("backoffLimit", 6))
        if launcher_failures > backoff_limit:
            failure = "Job has reached the specified backoff limit"
        done = dict(running, status="False", lastTransitionTime=now_rfc3339())
        for worker in worker_pods:  # cleanPodPolicy Running: the workers go when training ends
            await self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{worker['metadata']['name']}")
        if failure:
            if launcher is not None:
                self.print(launcher, f"{failure}\n")
                await self._terminate(launcher, exit_code=1, message=failure)
            final = {"type": "Failed", "status": "True", "reason": "MPIJobFailed",
                     "message": f"MPIJob {namespace}/{name} has failed because 1 Launcher replica(s) failed.",
                     "lastTransitionTime": now_rfc3339()}
            replicas = {"Launcher": {"active": None, "failed": max(1, launcher_failures)}, "Worker": {"active": None}}
        else:
            assert launcher is not None
            results = self.knobs.results_for.get(self._experiment(mpijob), self.knobs.training_results)
            self.print(launcher, json.dumps(results) + "\n")
            await self._terminate(launcher, exit_code=0, message=json.dumps(results))
            final = {"type": "Succeeded", "status": "True", "reason": "MPIJobSucceeded",
                     "message": f"MPIJob {namespace}/{name} successfully completed.", "lastTransitionTime": now_rfc3339()}
            replicas = {"Launcher": {"active": None, "succeeded": 1,  # a merge patch: None drops the key
                                     **({"failed": launcher_failures} if launcher_failures else {})},
                        "Worker": {"active": None}}
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

    # ---- the trainer, as the launcher's log shows it

    @staticmethod
    def _experiment(obj: Mapping[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return str((meta.get("labels") or {}).get(EXPERIMENT_LABEL) or meta.get("name"))

    def _on_pod_deleted(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        self._deleted_pods.add((str(meta.get("namespace")), str(meta.get("name"))))

    def _gone(self, pod: Mapping[str, Any]) -> bool:
        meta = pod["metadata"]
        return (meta["namespace"], meta["name"]) in self._deleted_pods

    @staticmethod
    def _epochs(mpijob: Mapping[str, Any]) -> int:
        """The trainer's `--epochs` from the launcher's command (1 when it has none)."""
        template = ClusterSimulation._pod_template(mpijob, "Launcher")
        command = " ".join(str(part) for part in ((template.get("spec") or {}).get("containers") or [{}])[0]
                           .get("command") or [])
        found = re.search(r"--epochs[ =](\d+)", command)
        return int(found.group(1)) if found else 1

    def _gpus(self, mpijob: Mapping[str, Any], ranks: int) -> list[dict[str, Any]] | None:
        """Per-rank NVML readings when the workers ask for GPUs, else null (as on CPU)."""
        worker = (ClusterSimulation._pod_template(mpijob, "Worker").get("spec") or {}).get("containers") or [{}]
        if not ((worker[0].get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu"):
            return None
        return [{"rank": rank, "utilizationPercent": 91.0 - rank, "memoryUsedBytes": 9 * 2**30,
                 "memoryTotalBytes": 16 * 2**30} for rank in range(ranks)]

    def val_accuracies(self, experiment: str, epochs: int) -> list[float]:
        """Validation accuracy after each epoch: the `val_accuracy` knob, else a climb to the results'."""
        given = self.knobs.val_accuracy.get(experiment)
        if given:
            return [float(given[min(i, len(given) - 1)]) for i in range(epochs)]
        top = float(self.knobs.training_results.get("accuracy", 0.95))
        return [round(0.5 + (top - 0.5) * (epoch + 1) / epochs, 4) for epoch in range(epochs)]

    async def _train(self, mpijob: dict[str, Any], launcher: dict[str, Any], base: str, created: dict[str, Any],
                     running: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
        """Play the trainer in the launcher: LANEX_PROGRESS lines step by step, a validation per epoch.

        Returns the launcher pod that finished (None when the last one was deleted past the backoff
        limit) and how many launcher pods were deleted and replaced (each counts as a failure).
        """
        meta = mpijob["metadata"]
        experiment, epochs = self._experiment(mpijob), self._epochs(mpijob)
        per_epoch = max(1, self.knobs.steps_per_epoch)
        steps = epochs * per_epoch
        pause = self.knobs.step_seconds if self.knobs.step_seconds is not None else self.knobs.mpijob_duration / steps
        accuracies = self.val_accuracies(experiment, epochs)
        reported = self.knobs.reported_step_seconds if self.knobs.reported_step_seconds is not None else pause
        workers = int(mpijob["spec"]["mpiReplicaSpecs"]["Worker"].get("replicas", 1))
        backoff_limit = int((mpijob["spec"].get("runPolicy") or {}).get("backoffLimit", 6))
        gpus = self._gpus(mpijob, workers)
        history: list[dict[str, Any]] = []
        failures, step, loss = 0, 0, 1.2
        run_id = f"{meta['name']}-{meta['uid'][:8]}"

        def line(state: str) -> str:
            epoch = max(1, (step - 1) // per_epoch + 1)  # the epoch the last step belongs to
            progress = {
                "state": state, "runId": run_id, "epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
                "loss": round(loss, 4), "learningRate": round(0.05 * (1 - step / steps) ** 0.9, 6),
                "imagesPerSecond": self.knobs.images_per_second, "dataWaitFraction": 0.12,
                "etaSeconds": int(round((steps - step) * reported)), "validation": history[-1] if history else None,
                "validationHistory": list(history), "gpus": gpus, "updatedAt": now_rfc3339()}
            return "[1,0]<stdout>:LANEX_PROGRESS " + json.dumps(progress, separators=(",", ":")) + "\n"

        while step < steps:
            if meta["uid"] in self._deleted_mpijobs:
                return None, failures
            if self._gone(launcher):  # deleted: the launcher Job makes a new pod, which resumes
                failures += 1
                self.launcher_restarts[meta["name"]] = failures
                self.knobs.stall_logging.discard(experiment)
                if failures > backoff_limit:
                    return None, failures
                launcher = await self._replace_launcher(mpijob, base, created, running, failures)
                step = (step // per_epoch) * per_epoch  # the checkpoint of the last finished epoch
                history = history[: step // per_epoch]
                self.print(launcher, f"lanex train: resuming from checkpoint of epoch {step // per_epoch} "
                                     f"(step {step}/{steps})\n")
                continue
            if experiment in self.knobs.stall_logging or meta["name"] in self.knobs.stall_logging:
                await asyncio.sleep(0.02)  # hung: nothing logged, the MPIJob stays Running
                continue
            if step == steps // 2:
                await self._hold(mpijob, stage="running")
                if self._gone(launcher):
                    continue
            await asyncio.sleep(pause)
            step += 1
            loss = loss * 0.9 + 0.05
            self.print(launcher, line("training"))
            if step % per_epoch == 0:
                epoch = step // per_epoch
                self.print(launcher, line("validating"))
                history.append({"epoch": epoch, "accuracy": accuracies[epoch - 1],
                                "fp": round(0.3 / (epoch + 1), 4), "fn": round(0.25 / (epoch + 1), 4),
                                "loss": round(loss * 1.1, 4)})
                self.print(launcher, line("training" if step < steps else "finished"))
        await self._hold(mpijob)
        return launcher, failures

    async def _replace_launcher(self, mpijob: dict[str, Any], base: str, created: dict[str, Any],
                                running: dict[str, Any], failures: int) -> dict[str, Any]:
        meta = mpijob["metadata"]
        workers = int(mpijob["spec"]["mpiReplicaSpecs"]["Worker"].get("replicas", 1))
        labels = {"training.kubeflow.org/job-name": meta["name"], "training.kubeflow.org/operator-name": "mpi-operator",
                  "training.kubeflow.org/job-role": "launcher"}
        launcher = await self._pod(mpijob, f"{meta['name']}-launcher-{_suffix()}", labels)
        self.print(launcher, f"lanex launch: mpirun -np {workers} --hostfile /etc/mpi/hostfile lanex train\n")
        await self.request("PATCH", base, {"status": {"conditions": [created, running], "replicaStatuses": {
            "Launcher": {"active": 1, "failed": failures}, "Worker": {"active": workers}}}})
        return launcher

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
