"""kube-scheduler: binds pods to kwok's fake nodes by their resources (nvidia.com/gpu included)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .build import binary
from .process import ManagedProcess, free_port, https_ok


@dataclass
class Scheduler:
    state_dir: Path
    kubeconfig: Path
    port: int = field(default_factory=free_port)

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            "kube-scheduler",
            [str(binary("kube-scheduler")), f"--kubeconfig={self.kubeconfig}",
             f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
             "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={self.port}",
             f"--cert-dir={self.state_dir / 'scheduler-certs'}", "--v=1"],
            self.state_dir, ready=lambda: https_ok(f"https://127.0.0.1:{self.port}/healthz", None),
        )
