"""Kubeflow's mpi-operator v0.8: MPIJob -> workers, hostfile, ssh keys, launcher Job, conditions.

It elects a leader in `--lock-namespace` before it does anything, and serves /healthz on the
fixed port 8080 of every interface (upstream hard-codes both the port and a 15 s lease): one
mpi-operator per machine, and a restarted one waits out its predecessor's lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .build import COMPONENTS, binary, module_source
from .process import ManagedProcess, http_ok

MODULE = "github.com/kubeflow/mpi-operator"
LOCK_NAMESPACE = "mpi-operator"
HEALTH_PORT = 8080  # upstream's constant


def crd_file() -> Path:
    return module_source(COMPONENTS["mpi-operator"], MODULE) / "manifests" / "base" / "kubeflow.org_mpijobs.yaml"


@dataclass
class MpiOperator:
    state_dir: Path
    kubeconfig: Path

    def process(self) -> ManagedProcess:
        process = ManagedProcess(
            "mpi-operator",
            [str(binary("mpi-operator")), f"--kubeConfig={self.kubeconfig}", f"--lock-namespace={LOCK_NAMESPACE}",
             "--threadiness=4", "--kube-api-qps=50", "--kube-api-burst=100"],
            self.state_dir,
        )
        process.ready = lambda: (http_ok(f"http://127.0.0.1:{HEALTH_PORT}/healthz")
                                 and "Leading started" in process.log_text())
        return process
