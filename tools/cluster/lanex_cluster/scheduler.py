"""kube-scheduler: binds pods to kwok's fake nodes by their resources (nvidia.com/gpu included).

Besides the default profile it serves a second one named `runai-scheduler`, so that pods of
RUN:ai experiments (which name that scheduler) are placed too: the RUN:ai scheduler itself is not
open source; here it is played by the upstream scheduler's default plugins under its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .build import binary
from .process import ManagedProcess, free_port, https_ok

PROFILES = ("default-scheduler", "runai-scheduler")


@dataclass
class Scheduler:
    state_dir: Path
    kubeconfig: Path
    port: int = field(default_factory=free_port)

    def process(self) -> ManagedProcess:
        config = self.state_dir / "kube-scheduler.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": name} for name in PROFILES],
        }))
        return ManagedProcess(
            "kube-scheduler",
            [str(binary("kube-scheduler")), f"--config={config}",
             f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
             "--bind-address=127.0.0.1", f"--secure-port={self.port}",
             f"--cert-dir={self.state_dir / 'scheduler-certs'}", "--v=1"],
            self.state_dir, ready=lambda: https_ok(f"https://127.0.0.1:{self.port}/healthz", None),
        )
