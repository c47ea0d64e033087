"""kube-controller-manager: Deployments, Jobs, garbage collection, service-account tokens, PV binding."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .build import binary
from .process import ManagedProcess, free_port, https_ok


@dataclass
class ControllerManager:
    state_dir: Path
    kubeconfig: Path
    ca_cert: Path
    service_account_key: Path
    port: int = field(default_factory=free_port)

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            "kube-controller-manager",
            [str(binary("kube-controller-manager")), f"--kubeconfig={self.kubeconfig}",
             f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
             f"--root-ca-file={self.ca_cert}", f"--service-account-private-key-file={self.service_account_key}",
             # One identity per controller, as in a real cluster: RBAC sees who did what.
             "--use-service-account-credentials=true",
             "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={self.port}",
             f"--cert-dir={self.state_dir / 'kcm-certs'}", "--v=1"],
            self.state_dir, ready=lambda: https_ok(f"https://127.0.0.1:{self.port}/healthz", None),
        )

