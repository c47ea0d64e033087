"""The operator on the real control plane, installed by the chart with the real `helm`, running
as the chart's ServiceAccount.

The chart's Deployment lands on a kwok node, where nothing runs; the operator process of the test
is started here instead, with exactly the Deployment's command line and environment and a token
of the chart's ServiceAccount from the TokenRequest API. Every call it makes is therefore judged
by the chart's RBAC, as in a cluster, and the apiserver's audit log records each one.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from k8s.operator_proc import OperatorProcess

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "lanex-operator"
RELEASE = "lanex"
NAMESPACE = "lanex-system"
# The chart's default classes, played on the test cluster by lanex's CSI driver (TR-4896 names them
# after Trident on ANF; what matters to the operator is that they exist and provision).
TR4896_CLASSES = ("azurenetappfiles", "netapp-csi-snapclass")
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
    """The apiserver's audit events of `user` (ResponseComplete stage)."""
    calls = []
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") == "ResponseComplete" and event.get("user", {}).get("username") == user:
            calls.append(event)
    return calls
