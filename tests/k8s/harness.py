"""An emulated cluster on a real 127.0.0.1 port, run from a background thread for synchronous tests.

Why it exists: tests, the kopf operator (in a thread or a subprocess) and `kubectl` all need one
apiserver URL and a kubeconfig; the emulator and the simulated controllers live on their own event
loop so that a test can block, sleep or restart the operator without stopping the cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pathlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kmock
import yaml

from k8s.cluster_sim import ClusterSimulation, SimKnobs
from k8s.emulator import ApiCall, ClusterEmulator, FaultPlan, ResourceSpec

T = TypeVar("T")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "lanex.dev_laneexperiments.yaml"
SWEEP_CRD_PATH = REPO_ROOT / "crds" / "lanex.dev_lanesweeps.yaml"
# The real upstream CRDs (mpi-operator v0.8.2, external-snapshotter), unmodified, beside the project;
# absent on a user's clone, where the emulator serves those APIs without their schemas, as before.
UPSTREAM_DIR = REPO_ROOT.parent / "shared" / "upstream"
UPSTREAM_CRD_FILES = ("kubeflow.org_mpijobs.yaml", "snapshot.storage.k8s.io_volumesnapshots.yaml",
                      "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
                      "snapshot.storage.k8s.io_volumesnapshotcontents.yaml")
UPSTREAM_MISSING = (f"the upstream CRDs are not at {UPSTREAM_DIR} (a user's clone has no ../shared/upstream/): "
                    f"tests against the real MPIJob and VolumeSnapshot schemas are skipped")


def upstream_crds() -> list[dict[str, Any]]:
    """The upstream CRDs from UPSTREAM_DIR; empty when any of them is missing."""
    if not all((UPSTREAM_DIR / name).is_file() for name in UPSTREAM_CRD_FILES):
        return []
    crds = []
    for name in UPSTREAM_CRD_FILES:
        for doc in yaml.safe_load_all((UPSTREAM_DIR / name).read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds

# Used until the generated CRD is checked in: the same resource, served with a status subresource.
FALLBACK_LANEEXPERIMENT = ResourceSpec("lanex.dev", "v1alpha1", "laneexperiments", "LaneExperiment", True,
                                       frozenset({"status"}), frozenset({"lx"}))

DEFAULT_STORAGE_CLASS = "azurenetappfiles"
DEFAULT_SNAPSHOT_CLASS = "netapp-csi-snapclass"


def load_crd() -> dict[str, Any] | None:
    """The LaneExperiment CRD: the checked-in file, else generated from the API models."""
    if CRD_PATH.exists():
        for doc in yaml.safe_load_all(CRD_PATH.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                return doc
    try:
        from lanex_operator.api.crd import build_crd
    except ImportError:
        return None
    return build_crd()


def load_sweep_crd() -> dict[str, Any] | None:
    """The LaneSweep CRD: the checked-in file, else generated from the API models."""
    if SWEEP_CRD_PATH.exists():
        return yaml.safe_load(SWEEP_CRD_PATH.read_text())
    try:
        from lanex_operator.api.sweep_crd import build_sweep_crd
    except ImportError:
        return None
    return build_sweep_crd()


class EmulatedCluster:
    """The emulator, the cluster simulation and a kubeconfig, started and stopped as one."""

    def __init__(self, workdir: pathlib.Path, knobs: SimKnobs | None = None,
                 namespaces: tuple[str, ...] = ("default",), simulate: bool = True,
                 upstream: bool = True, extra_crds: tuple[dict[str, Any], ...] = ()) -> None:
        self.workdir = workdir
        self.knobs = knobs or SimKnobs()
        # The upstream CRDs (when present and `upstream`), then `extra_crds` (e.g. an older MPIJob CRD).
        self.upstream = upstream_crds() if upstream else []
        self.extra_crds = extra_crds
        self.initial_namespaces = namespaces
        self.simulate = simulate
        self.emulator = ClusterEmulator()
        self.sim: ClusterSimulation | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulated-cluster", daemon=True)
        self._server: kmock.Server | None = None

    # ---- lifecycle

    def start(self) -> EmulatedCluster:
        self._thread.start()
        self.run(self._astart())
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()))
        return self

    async def _astart(self) -> None:
        crd = load_crd()
        if crd is not None:
            self.emulator.register_crd(crd, validate=True)
            self.create(crd)
        else:
            self.emulator.register(FALLBACK_LANEEXPERIMENT)
        sweep_crd = load_sweep_crd()
        if sweep_crd is not None:
            self.emulator.register_crd(sweep_crd, validate=True)
            self.create(sweep_crd)
        for upstream in (*self.upstream, *self.extra_crds):
            self.emulator.register_crd(upstream, validate=True)
            self.create(upstream)
        await self.emulator.__aenter__()
        self._server = kmock.Server(self.emulator)
        await self._server.__aenter__()
        self.port = self._server.port
        for namespace in self.initial_namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                     "metadata": {"name": DEFAULT_STORAGE_CLASS}, "provisioner": "csi.trident.netapp.io",
                     "allowVolumeExpansion": True, "volumeBindingMode": "Immediate"})
        self.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                     "metadata": {"name": DEFAULT_SNAPSHOT_CLASS}, "driver": "csi.trident.netapp.io",
                     "deletionPolicy": "Delete"})
        if self.simulate:
            self.sim = ClusterSimulation(self.url, self.knobs, write_log=self.emulator.write_pod_log)
            await self.sim.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.run(self._astop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _astop(self) -> None:
        if self.sim is not None:
            await self.sim.stop()
        self.emulator.shutdown()
        await asyncio.sleep(0.05)
        if self._server is not None:
            await self._server.__aexit__(None, None, None)
        await self.emulator.__aexit__(None, None, None)

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- access

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.workdir / "kubeconfig.yaml"

    def kubeconfig_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": "default"}}],
        }

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a synchronous store operation on the cluster's loop (thread-safe, emits watch events)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed over to the caller's thread
                future.set_exception(exc)

        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        self._loop.call_soon_threadsafe(invoke)
        return future.result(30)

    # ---- object helpers (through the emulator's own operations)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        spec = self.emulator.find_spec(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace") if spec.namespaced else None
        return self.call(self.emulator.create_object, spec, namespace, dict(obj))

    def get(self, plural: str, name: str, namespace: str | None = None, api_version: str | None = None) -> dict[str, Any] | None:
        spec = self.emulator.find_spec(api_version=api_version, plural=plural)
        key = (spec.key, namespace if spec.namespaced else None, name)
        obj = self.call(self.emulator._store.get, key)
        return None if obj is None else self.emulator._visible(obj)

    def list(self, plural: str, namespace: str | None = None, label_selector: str = "",
             api_version: str | None = None) -> list[dict[str, Any]]:
        return self.call(self.emulator.objects, plural, namespace, api_version, label_selector)

    def patch(self, plural: str, name: str, patch: Mapping[str, Any], namespace: str | None = None,
              status: bool = False, api_version: str | None = None) -> dict[str, Any]:
        spec = self.emulator.find_spec(api_version=api_version, plural=plural)
        return self.call(self.emulator.patch_object, spec, namespace, name, dict(patch),
                         "application/merge-patch+json", status)

    def delete(self, plural: str, name: str, namespace: str | None = None,
               api_version: str | None = None) -> dict[str, Any]:
        spec = self.emulator.find_spec(api_version=api_version, plural=plural)
        return self.call(self.emulator.delete_object, spec, namespace, name)

    def set_faults(self, plan: FaultPlan | None) -> None:
        self.call(setattr, self.emulator, "faults", plan)

    def calls(self) -> list[ApiCall]:
        return self.call(list, self.emulator.calls)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05,
                 message: str = "condition") -> T:
        """Poll until `predicate()` is truthy; fail with `message` and the last value otherwise."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")
