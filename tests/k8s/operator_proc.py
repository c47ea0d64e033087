"""The real operator as a child process, pointed at the emulated cluster through a kubeconfig.

Why it exists: restarts must be real (SIGKILL in the middle of a step, then a fresh process that
knows only what the cluster knows), and the operator's memory must be measurable on its own.
`python -m lanex_operator.controller.runtime` is exactly what `lanex operator` runs.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

# The User-Agents of the operator's requests: kopf's own client and the operator's (lanex_operator.controller.kube).
OPERATOR_USER_AGENTS = ("kopf/", "lanex-operator/")

# Intervals that make the whole lifecycle take well under a second on the emulator.
FAST_ENV = {
    "LANEX_OPERATOR_RESYNC_SECONDS": "1",
    "LANEX_OPERATOR_RETRY_DELAY_SECONDS": "0.2",
    "LANEX_OPERATOR_PREFLIGHT_RETRY_SECONDS": "0.3",
    "LANEX_OPERATOR_PREFLIGHT_CACHE_SECONDS": "0.2",
    "LANEX_OPERATOR_DATASET_BOUND_TIMEOUT_SECONDS": "30",
    "LANEX_OPERATOR_API_ERROR_BACKOFFS": "0.1,0.2,0.4",
    "LANEX_OPERATOR_REQUEST_TIMEOUT_SECONDS": "5",
    "LANEX_OPERATOR_PROGRESS_INTERVAL_SECONDS": "0.2",
    "LANEX_OPERATOR_PROGRESS_REQUESTS_PER_SECOND": "200",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """One `python -m lanex_operator.controller.runtime` process with its own log file, liveness and metrics ports."""

    def __init__(self, kubeconfig: pathlib.Path, workdir: pathlib.Path, env: Mapping[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        """`command` replaces the default `python -m ...runtime --all-namespaces` (ports are appended)."""
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.env = {**FAST_ENV, **(env or {})}
        self.command = command or [sys.executable, "-m", "lanex_operator.controller.runtime", "--all-namespaces"]
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> pathlib.Path:
        return self.workdir / f"operator-{self.starts}.log"

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("operator-*.log")))

    def start(self, timeout: float = 20.0) -> OperatorProcess:
        self.starts += 1
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*self.command, "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"operator not live after {timeout}s:\n{self.log_path.read_text()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last write, like a node failure."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the running process so far."""
        assert self.process is not None
        fields = pathlib.Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_kib(self) -> int:
        """VmHWM of the running process (peak resident set size), in KiB."""
        assert self.process is not None
        for line in pathlib.Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("VmHWM not found in /proc/PID/status")
