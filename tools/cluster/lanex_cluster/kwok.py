"""kwok: fake nodes (with `nvidia.com/gpu`) and fake pods; nothing runs inside them.

The stages are kwok's own "fast" set, read from the module we built (node-initialize, heartbeat
with lease, pod-ready, pod-complete for pods owned by Jobs, pod-delete). kwok also serves the
kubelet API on 127.0.0.1, so `kubectl logs` and the operator's log reads reach it through the
real apiserver; a ClusterLogs object names the recorded file it answers with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .build import COMPONENTS, binary, module_source
from .certs import KeyPair
from .process import ManagedProcess, free_port, tcp_listening

KWOK_MODULE = "sigs.k8s.io/kwok"
STAGE_FILES = ("node/fast/node-initialize.yaml", "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
               "pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml")
# kwok's CRDs, installed so that logs and stages can be configured through the API.
ENABLED_CRDS = ("ClusterLogs", "Logs")
NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_LEASE_SECONDS = 40  # a kubelet's (and kwokctl's) default


def kwok_source() -> Path:
    return module_source(COMPONENTS["kwok"], KWOK_MODULE)


def stage_documents() -> list[dict[str, Any]]:
    stages = kwok_source() / "kustomize" / "stage"
    return [yaml.safe_load((stages / name).read_text()) for name in STAGE_FILES]


def crd_files() -> list[Path]:
    bases = kwok_source() / "kustomize" / "crd" / "bases"
    return [bases / "kwok.x-k8s.io_clusterlogs.yaml", bases / "kwok.x-k8s.io_logs.yaml"]


def fake_node(name: str, gpus: int, cpu: str = "32", memory: str = "256Gi") -> dict[str, Any]:
    """A Node kwok manages: Ready once kwok initialises it, advertising `gpus` NVIDIA GPUs."""
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "nvidia.com/gpu": str(gpus),
                 "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {NODE_ANNOTATION: "fake"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true",
                                # AKS names a node's pool by this label (TR-4896's GPU pool).
                                "agentpool": "gpu"}},
        "spec": {},
        # Both addresses up front: kwok's node-initialize stage, re-run when a node was NotReady
        # (kwok stopped longer than the node controller's grace period), writes an empty address
        # list when either is missing, and the apiserver can then no longer reach the node for logs.
        "status": {"capacity": resources, "allocatable": resources,
                   "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                 {"type": "Hostname", "address": name}]},
    }


@dataclass
class Kwok:
    state_dir: Path
    kubeconfig: Path
    serving: KeyPair
    port: int = field(default_factory=free_port)

    def process(self) -> ManagedProcess:
        config = self.state_dir / "kwok.yaml"
        config.write_text(yaml.safe_dump_all(stage_documents(), sort_keys=False))
        return ManagedProcess(
            "kwok",
            [str(binary("kwok")), f"--kubeconfig={self.kubeconfig}", f"--config={config}",
             f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
             "--node-ip=127.0.0.1", f"--node-port={self.port}", f"--server-address=127.0.0.1:{self.port}",
             f"--tls-cert-file={self.serving.cert}", f"--tls-private-key-file={self.serving.key}",
             f"--enable-crds={','.join(ENABLED_CRDS)}", "--cidr=10.244.0.0/16",
             # Node Leases renewed as a kubelet does (kwokctl's default). Without them
             # kube-controller-manager finds every node NotReady after its 50 s grace period, kwok
             # then re-plays node-initialize, whose patch drops the nodes' addresses: pod logs
             # ("no preferred addresses found") and scheduling fail until the next heartbeat.
             f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}"],
            self.state_dir, ready=lambda: tcp_listening(self.port),
        )

