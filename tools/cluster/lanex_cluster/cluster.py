"""The whole control plane, started in dependency order and stopped in reverse.

`LocalCluster(state_dir).start()` is what `make cluster` runs (its processes outlive the command;
`make cluster-down` ends them from `processes.json`) and what the pytest session fixture runs
(it stops them when the session ends). It returns once every component is healthy, the fake GPU
nodes are Ready and the upstream CRDs are Established.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import kueue as kueue_component
from . import kwok as kwok_component
from .apiserver import ApiServer
from .build import binary
from .certs import CertificateAuthority, service_account_key
from .controller_manager import ControllerManager
from .csi import SNAPSHOT_CRD_NAMES, Csi, snapshot_crd_files, storage_objects
from .etcd import Etcd
from .kubeconfig import kubeconfig_for, write_kubeconfig
from .mpi_operator import LOCK_NAMESPACE, MpiOperator
from .mpi_operator import crd_file as mpijob_crd_file
from .process import ManagedProcess, StartError, stop_registered
from .scheduler import Scheduler


@dataclass(frozen=True)
class ClusterConfig:
    """What the fake data centre looks like."""

    gpu_nodes: int = 4
    gpus_per_node: int = 4
    namespaces: tuple[str, ...] = ("default",)


def clear_state_dir(state_dir: Path) -> None:
    stop_registered(state_dir)  # a previous run's leftovers, if its stop never came
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)


class LocalCluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1."""

    def __init__(self, state_dir: Path, config: ClusterConfig | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.config = config or ClusterConfig()
        self.processes: dict[str, ManagedProcess] = {}
        self.server = ""
        self.ca_cert = self.state_dir / "pki" / "ca.crt"
        self.audit_log = self.state_dir / "audit.log"
        self.start_seconds: dict[str, float] = {}  # how long each component took to become ready
        self._lock = threading.RLock()  # the supervisor and the caller never start one process twice
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    # ---- lifecycle

    def start(self, fresh: bool = True) -> LocalCluster:
        """Start everything; `fresh` first ends a previous run's leftovers and empties the state directory."""
        if fresh:
            clear_state_dir(self.state_dir)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="lanex-cluster-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        """Start crashed components again, with a growing delay, as a kubelet restarts its pods.

        Upstream controllers exit on purpose: mpi-operator exits when it loses its leader lease
        (for instance while kube-apiserver restarts) and relies on its Deployment to come back.
        """
        log = self.state_dir / "logs" / "supervisor.log"
        while not self._stopping.wait(0.5):
            with self._lock:
                for process in list(self.processes.values()):
                    if self._stopping.is_set() or not process.crashed:
                        continue
                    code = process.popen.returncode if process.popen else None
                    delay = min(10.0, 0.5 * 2 ** process.restarts)
                    with log.open("a") as out:
                        out.write(f"{time.strftime('%H:%M:%S')} {process.name} exited with {code}; "
                                  f"restart #{process.restarts + 1} in {delay:.1f} s\n")
                    time.sleep(delay)
                    process.restarts += 1
                    try:
                        process.start(timeout=120)
                    except StartError as error:
                        with log.open("a") as out:
                            out.write(f"{time.strftime('%H:%M:%S')} {error}\n")

    def _start(self) -> None:
        pki = CertificateAuthority(self.state_dir / "pki")
        hosts = ("127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default",
                 "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
        serving = pki.issue("apiserver", "kube-apiserver", server_hosts=hosts)
        admin = pki.issue("admin", "lanex-admin", "system:masters")
        sa_key = service_account_key(pki.directory)

        etcd = Etcd(self.state_dir)
        self._run(etcd.process(), timeout=60)
        apiserver = ApiServer(self.state_dir, etcd.url, pki.pair, serving, admin, sa_key)
        self._run(apiserver.process(), timeout=180)
        self.server = apiserver.url

        write_kubeconfig(self.kubeconfig, kubeconfig_for(self.server, pki.pair.cert, admin))
        identities = {
            "kube-controller-manager": pki.issue("kcm", "system:kube-controller-manager"),
            "kube-scheduler": pki.issue("scheduler", "system:kube-scheduler"),
        }
        configs = {name: write_kubeconfig(self.state_dir / "kubeconfigs" / name,
                                          kubeconfig_for(self.server, pki.pair.cert, pair))
                   for name, pair in identities.items()}
        self._run(ControllerManager(self.state_dir, configs["kube-controller-manager"], pki.pair.cert,
                                    sa_key).process(), timeout=120)
        self._run(Scheduler(self.state_dir, configs["kube-scheduler"]).process(), timeout=120)
        mpijob_api, abort = threading.Event(), threading.Event()
        kueue = _Background(lambda: self._start_kueue(pki, mpijob_api, abort))
        try:
            self._start_the_rest(pki, mpijob_api)
        except BaseException:
            abort.set()
            kueue.join(reraise=False)  # before stop(): it must not start Kueue after that
            raise
        kueue.join()

    def _start_the_rest(self, pki: CertificateAuthority, mpijob_api: threading.Event) -> None:

        self.apply_files(kwok_component.crd_files())
        self.wait_established(["clusterlogs.kwok.x-k8s.io", "logs.kwok.x-k8s.io"])
        kwok_serving = pki.issue("kwok", "kwok", server_hosts=("127.0.0.1", "localhost"))
        self._run(kwok_component.Kwok(self.state_dir, self.kubeconfig, kwok_serving).process(), timeout=60)
        nodes = [kwok_component.fake_node(f"gpu-node-{i}", self.config.gpus_per_node)
                 for i in range(self.config.gpu_nodes)]
        self.apply_objects(nodes)
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")
        for namespace in self.config.namespaces:
            self.ensure_namespace(namespace)

        self.apply_files([*snapshot_crd_files(), mpijob_crd_file()])
        self.wait_established([*SNAPSHOT_CRD_NAMES, "mpijobs.kubeflow.org"])
        mpijob_api.set()
        for process in Csi(self.state_dir, self.kubeconfig).processes():
            self._run(process, timeout=60)
        self.apply_objects(storage_objects())
        self.ensure_namespace(LOCK_NAMESPACE)
        self._run(MpiOperator(self.state_dir, self.kubeconfig).process(), timeout=60)

    def _start_kueue(self, pki: CertificateAuthority, mpijob_api: threading.Event, abort: threading.Event) -> None:
        """Kueue, set up while the rest starts (its CRDs, RBAC and start-up take seconds of their own):
        started once the MPIJob CRD is served (its integration needs it), its webhooks registered once
        it serves them, ready once the apiserver admits an object through them."""
        kueue = kueue_component.Kueue(self.state_dir, pki.pair.cert,
                                      pki.issue("kueue", "kueue", server_hosts=("127.0.0.1",)))
        crds = kueue.crds()
        self.apply_objects(crds)
        self.apply_objects([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kueue_component.NAMESPACE}},
                            *kueue_component.rbac_objects()])
        token = self.kubectl("create", "token", kueue_component.SERVICE_ACCOUNT, "-n", kueue_component.NAMESPACE,
                             "--duration=168h").stdout.strip()
        kubeconfig = write_kubeconfig(self.state_dir / "kubeconfigs" / "kueue",
                                      kubeconfig_for(self.server, pki.pair.cert, token=token))
        self.wait_established(kueue_component.crd_names(crds))
        while not mpijob_api.wait(0.2):
            if abort.is_set():
                return
        self._run(kueue.process(kubeconfig), timeout=120)
        self.apply_objects(kueue.webhooks())
        self.wait_admitted(kueue_component.resource_flavor_probe(), "Kueue's webhooks")

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=150)
        with self._lock:
            for process in reversed(list(self.processes.values())):
                process.stop()
            self.processes.clear()
        stop_registered(self.state_dir)

    @contextlib.contextmanager
    def paused(self, *names: str, timeout: float = 120) -> Iterator[None]:
        """Stop components (e.g. kwok, csi-snapshotter) for the block, then start them again.

        This freezes a phase on demand: without kwok no pod moves on, without csi-provisioner no
        claim binds. kwok also renews the fake nodes' leases, so keep a pause of kwok well under the
        node controller's 40 s grace period, or the nodes turn NotReady.
        """
        with self._lock:
            for name in names:
                self.processes[name].stop()
        try:
            yield
        finally:
            with self._lock:
                for name in names:
                    self.processes[name].start(timeout)

    def restart(self, name: str, timeout: float = 180) -> None:
        """Stop and start one component (same flags, ports and data): a crash or an upgrade."""
        with self._lock:
            self.processes[name].stop()
            self.processes[name].start(timeout)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, process: ManagedProcess, timeout: float) -> None:
        self.processes[process.name] = process
        started = time.monotonic()
        process.start(timeout)
        self.start_seconds[process.name] = round(time.monotonic() - started, 1)

    # ---- client helpers (the real kubectl we built)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [str(binary("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)} failed ({result.returncode}): "
                             f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def apply_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))

    def apply_objects(self, objects: Sequence[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input=yaml.safe_dump_all(list(objects), sort_keys=False))

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def wait_established(self, crd_names: Sequence[str], timeout: float = 60) -> None:
        """Until each CRD is Established (`kubectl wait` fails while a new CRD has no status yet)."""
        deadline = time.monotonic() + timeout
        pending = list(crd_names)
        while pending:
            crds = self.get("crd", *pending)
            items = crds.get("items", [crds])
            established = {item["metadata"]["name"] for item in items
                           if any(c["type"] == "Established" and c["status"] == "True"
                                  for c in item.get("status", {}).get("conditions") or [])}
            pending = [name for name in pending if name not in established]
            if pending and time.monotonic() > deadline:
                raise StartError(f"CRDs not Established after {timeout:.0f} s: {', '.join(pending)}")
            if pending:
                time.sleep(0.2)

    def wait_admitted(self, obj: dict[str, Any], through: str, timeout: float = 60) -> None:
        """Until the apiserver admits `obj` (a server-side dry run), e.g. through webhooks just registered."""
        deadline = time.monotonic() + timeout
        document = yaml.safe_dump(obj)
        while True:
            result = self.kubectl("create", "--dry-run=server", "-f", "-", input=document, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise StartError(f"{through} did not admit {obj['kind']} within {timeout:.0f} s: "
                                 f"{result.stderr.strip()}")
            time.sleep(0.2)

    def ensure_namespace(self, name: str, timeout: float = 60) -> None:
        """The namespace, once kube-controller-manager gave it its `default` ServiceAccount."""
        self.apply_objects([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise StartError(f"namespace {name} got no default ServiceAccount within {timeout:.0f} s "
                                 f"(is kube-controller-manager running?)")
            time.sleep(0.2)


class _Background:
    """A start-up step on a thread of its own; `join` waits for it and raises what it raised."""

    def __init__(self, step: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(step,), name="lanex-cluster-start", daemon=True)
        self._thread.start()

    def _run(self, step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException as error:  # noqa: BLE001 - handed to the joining thread
            self._error = error

    def join(self, reraise: bool = True) -> None:
        self._thread.join()
        if reraise and self._error is not None:
            raise self._error
