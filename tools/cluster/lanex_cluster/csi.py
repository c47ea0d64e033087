"""The CSI machinery: a CSI driver plugin, csi-provisioner, csi-snapshotter and snapshot-controller.

The sidecars and the snapshot controller are upstream (external-provisioner v5, external-snapshotter
v8). The plugin is `csi-dir-driver`, lanex's own controller-only CSI driver (tools/k8s/csi-dir-driver),
standing in for csi-driver-host-path, which the Go proxy here does not serve: volumes and snapshots
are directories, and restores are copies, all reached through the real CSI gRPC calls. Without a
kubelet there are no CSINode objects, so topology stays off and the StorageClass binds immediately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import COMPONENTS, binary, module_source
from .process import ManagedProcess, free_port, tcp_listening

DRIVER = "dir.csi.lanex.dev"
STORAGE_CLASS = "lanex-csi"
SNAPSHOT_CLASS = "lanex-csi-snapclass"
SNAPSHOT_CLIENT_MODULE = "github.com/kubernetes-csi/external-snapshotter/client/v8"
SNAPSHOT_CRDS = ("snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
                 "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
                 "snapshot.storage.k8s.io_volumesnapshots.yaml")
SNAPSHOT_CRD_NAMES = ("volumesnapshotclasses.snapshot.storage.k8s.io",
                      "volumesnapshotcontents.snapshot.storage.k8s.io", "volumesnapshots.snapshot.storage.k8s.io")
DEFAULT_CLASS = {"storageclass.kubernetes.io/is-default-class": "true"}
DEFAULT_SNAPSHOT_CLASS = {"snapshot.storage.kubernetes.io/is-default-class": "true"}


def snapshot_crd_files() -> list[Path]:
    crds = module_source(COMPONENTS["snapshotter"], SNAPSHOT_CLIENT_MODULE) / "config" / "crd"
    return [crds / name for name in SNAPSHOT_CRDS]


def storage_objects() -> list[dict[str, Any]]:
    """The CSIDriver, the default StorageClass and the default VolumeSnapshotClass of the driver."""
    return [
        {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER},
         "spec": {"attachRequired": False, "podInfoOnMount": False}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": STORAGE_CLASS, "annotations": DEFAULT_CLASS},
         "provisioner": DRIVER, "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"},
        {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
         "metadata": {"name": SNAPSHOT_CLASS, "annotations": DEFAULT_SNAPSHOT_CLASS},
         "driver": DRIVER, "deletionPolicy": "Delete"},
    ]


@dataclass
class Csi:
    state_dir: Path
    kubeconfig: Path
    provisioner_port: int = field(default_factory=free_port)
    snapshotter_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)

    @property
    def socket(self) -> Path:
        return self.state_dir / "csi" / "csi.sock"

    def processes(self) -> list[ManagedProcess]:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-election=false"]
        sidecar = [*common, f"--csi-address={self.socket}", "--timeout=30s", "--retry-interval-max=5s"]
        return [
            ManagedProcess("csi-dir-driver", [str(binary("csi-dir-driver")), f"--endpoint=unix://{self.socket}",
                                              f"--drivername={DRIVER}", f"--state-dir={self.state_dir / 'csi'}"],
                           self.state_dir, ready=self.socket.exists),
            ManagedProcess("csi-provisioner", [str(binary("csi-provisioner")), *sidecar, "--extra-create-metadata",
                                               f"--http-endpoint=127.0.0.1:{self.provisioner_port}"],
                           self.state_dir, ready=lambda: tcp_listening(self.provisioner_port)),
            ManagedProcess("csi-snapshotter", [str(binary("csi-snapshotter")), *sidecar,
                                               f"--http-endpoint=127.0.0.1:{self.snapshotter_port}"],
                           self.state_dir, ready=lambda: tcp_listening(self.snapshotter_port)),
            ManagedProcess("snapshot-controller", [str(binary("snapshot-controller")), *common,
                                                   "--retry-interval-max=5s",
                                                   f"--http-endpoint=127.0.0.1:{self.controller_port}"],
                           self.state_dir, ready=lambda: tcp_listening(self.controller_port)),
        ]
