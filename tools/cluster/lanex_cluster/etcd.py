"""etcd: the apiserver's store, on 127.0.0.1 ports, as envtest starts it (no fsync: test data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .build import binary
from .process import ManagedProcess, free_port, http_ok


@dataclass
class Etcd:
    state_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def process(self) -> ManagedProcess:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return ManagedProcess(
            "etcd",
            [str(binary("etcd")), "--name=lanex", f"--data-dir={self.state_dir / 'etcd'}",
             f"--listen-client-urls={self.url}", f"--advertise-client-urls={self.url}",
             f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
             f"--initial-cluster=lanex={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
             # A test cluster's history is short: compact often instead of growing.
             "--auto-compaction-mode=periodic", "--auto-compaction-retention=5m"],
            self.state_dir, ready=lambda: http_ok(f"{self.url}/health"),
        )
