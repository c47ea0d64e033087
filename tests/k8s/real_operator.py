"""The operator on the real control plane, installed by the chart with the real `helm`, running
as the chart's ServiceAccount.

The chart's Deployment lands on a kwok node, where nothing runs; the operator process of the test
is started here instead, with exactly the Deployment's command line and environment and a token
of the chart's ServiceAccount from the TokenRequest API. Every call it makes is therefore judged
by the chart's RBAC, as in a cluster, and the apiserver's audit log records each one.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from k8s.operator_proc import OperatorProcess
from k8s.recorded_launcher import record_launcher_log, serve_for_launchers

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "lanex-operator"
RELEASE = "lanex"
NAMESPACE = "lanex-system"
# The chart's default classes, played on the test cluster by lanex's CSI driver (TR-4896 names them
# after Trident on ANF; what matters to the operator is that they exist and provision).
TR4896_CLASSES = ("azurenetappfiles", "netapp-csi-snapclass")
# Chart values that make the operator react in test time (each is a documented chart value).
# A pod that stays unschedulable fails its experiment after 40 s (kwok schedules healthy pods at once).
FAST_VALUES = ("progress.intervalSeconds=1", "progress.requestsPerSecond=50", "timeouts.podStuckSeconds=40")
RUN_TIMEOUT_S = 180
# The Deployment's own ports are replaced by free ones: several operators may run in one session.
PORT_FLAGS = ("--liveness-port", "--metrics-port")


def helm(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    from lanex_cluster.build import binary

    result = subprocess.run([str(binary("helm")), f"--kubeconfig={cluster.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result


def create_tr4896_classes(cluster: Any) -> None:
    from lanex_cluster.csi import DRIVER

    storage_class, snapshot_class = TR4896_CLASSES
    cluster.apply_objects([
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": storage_class},
         "provisioner": DRIVER, "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete",
         "allowVolumeExpansion": True},
        {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
         "metadata": {"name": snapshot_class}, "driver": DRIVER, "deletionPolicy": "Delete"},
    ])


@dataclass
class InstalledChart:
    service_account: str
    deployment: dict[str, Any]

    def container(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]["containers"][0]

    def environment(self) -> dict[str, str]:
        """The operator container's plain `value` variables (the chart sets no secret ones by default)."""
        return {item["name"]: item["value"] for item in self.container().get("env", []) if "value" in item}

    def command(self) -> list[str]:
        """`lanex <args>` as the container runs it, without the port flags."""
        args = [a for a in self.container().get("args", []) if not a.startswith(PORT_FLAGS)]
        return [str(pathlib.Path(sys.executable).with_name("lanex")), *args]


def install_chart(cluster: Any, *values: str) -> InstalledChart:
    """`helm install` the chart (CRDs included) and read back what it created."""
    helm(cluster, "upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
         *(arg for value in values for arg in ("--set", value)))
    deployments = cluster.get("deployment", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    assert len(deployments) == 1, [d["metadata"]["name"] for d in deployments]
    deployment = deployments[0]
    return InstalledChart(deployment["spec"]["template"]["spec"]["serviceAccountName"], deployment)


def service_account_kubeconfig(cluster: Any, service_account: str, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig with a token of `service_account` (TokenRequest API, 3 h)."""
    from lanex_cluster.kubeconfig import kubeconfig_for, write_kubeconfig

    token = cluster.kubectl("create", "token", service_account, "-n", NAMESPACE, "--duration=3h").stdout.strip()
    return write_kubeconfig(path, kubeconfig_for(cluster.server, cluster.ca_cert, token=token))


def start_operator(cluster: Any, chart: InstalledChart, workdir: pathlib.Path,
                   env: dict[str, str] | None = None) -> OperatorProcess:
    kubeconfig = service_account_kubeconfig(cluster, chart.service_account, workdir / "operator.kubeconfig")
    return OperatorProcess(kubeconfig, workdir, {**chart.environment(), **(env or {})}, command=chart.command()).start()


def audited_calls(cluster: Any, user: str) -> list[dict[str, Any]]:
    """The apiserver's audit events of `user`'s finished calls, oldest first."""
    from lanex_cluster.audit import completed_calls

    return completed_calls(cluster.audit_log, user)


@dataclass
class LanexOnCluster:
    cluster: Any
    chart: InstalledChart
    operator: OperatorProcess
    recorded_results: dict[str, Any]

    def apply(self, obj: dict[str, Any]) -> None:
        namespace = obj["metadata"].get("namespace", "default")
        self.cluster.ensure_namespace(namespace)
        self.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

    def crash_and_restart_operator(self) -> None:
        """SIGKILL the operator (no cleanup, no last write) and start a new one that knows only the cluster."""
        self.operator.kill()
        self.operator.start()

    def children(self, resource: str, namespace: str, experiment: str) -> list[dict[str, Any]]:
        return self.cluster.get(resource, "-n", namespace, "-l", f"lanex.dev/experiment={experiment}")["items"]

    def wait_for(self, what: str, predicate: Any, timeout: float = RUN_TIMEOUT_S, namespace: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.scene(namespace)}")

    def scene(self, namespace: str = "") -> str:
        """What a person would look at when a wait times out: the objects, the Events, the operator's log."""
        scope = ["-n", namespace] if namespace else ["-A"]
        objects = self.cluster.kubectl("get", "lx,lxs,pvc,job,mpijob,pod,volumesnapshot", *scope, "-o", "wide",
                                       check=False).stdout
        events = self.cluster.kubectl("get", "events", *scope, "--sort-by=.lastTimestamp", check=False).stdout
        return (f"objects:\n{objects}\nevents (last 30):\n" + "\n".join(events.splitlines()[-30:])
                + f"\noperator log:\n{self.operator.logs()[-3000:]}")

    def wait_phase(self, kind: str, name: str, namespace: str, phases: tuple[str, ...] = ("Succeeded",),
                   timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.cluster.get(kind, name, "-n", namespace)
            phase = obj.get("status", {}).get("phase")
            if phase in phases:
                return obj
            if phase == "Failed":
                break
            time.sleep(0.5)
        raise AssertionError(f"{kind} {namespace}/{name} did not reach {phases}: "
                             f"{json.dumps(obj.get('status'), indent=1)[:3000]}\n{self.scene(namespace)}")


def recorded_results(log_file: pathlib.Path) -> dict[str, Any]:
    """The results JSON the recorded launcher printed last (what the operator must report)."""
    for line in reversed(log_file.read_text().splitlines()):
        text = line.split(" ", 3)[-1].split("\r")[-1].strip()
        if text.startswith("{") and text.endswith("}"):
            return json.loads(text)
    raise AssertionError(f"no results line in {log_file}")


# The session's operators while they run: tests that play the operator's part themselves pause them.
RUNNING_OPERATORS: list[OperatorProcess] = []


def lanex_on_cluster_session(real_cluster: Any, tmp_path_factory: Any) -> Iterator[LanexOnCluster]:
    """The chart installed, the recording served, the operator running as the chart's ServiceAccount."""
    create_tr4896_classes(real_cluster)
    chart = install_chart(real_cluster, *FAST_VALUES)
    recording = record_launcher_log(tmp_path_factory.mktemp("recording"))
    serve_for_launchers(real_cluster, recording)
    operator = start_operator(real_cluster, chart, tmp_path_factory.mktemp("operator"))
    RUNNING_OPERATORS.append(operator)
    try:
        yield LanexOnCluster(real_cluster, chart, operator, recorded_results(recording))
    finally:
        RUNNING_OPERATORS.remove(operator)
        operator.stop()


@contextlib.contextmanager
def operators_paused() -> Iterator[None]:
    """SIGSTOP the session's operators (they serve every namespace) while a test writes the statuses they would,
    then SIGCONT them: a paused process keeps its watches and state, and simply catches up."""
    paused = [op.process for op in RUNNING_OPERATORS if op.process is not None and op.process.poll() is None]
    for process in paused:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in paused:
            process.send_signal(signal.SIGCONT)
