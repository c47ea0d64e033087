"""One upstream program as a child process: start, wait until healthy, stop, and find it again.

Every process runs in its own session (its own process group), logs to `<state>/logs/<name>.log`
and is recorded in `<state>/processes.json` with its start time, so that `make cluster-down` (a
different process from the one that started it) ends exactly these processes and no other that
happens to reuse a pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REGISTRY_FILE = "processes.json"
# processes.json is read, changed and replaced whole: components started side by side (Kueue's
# start-up thread, the supervisor) take turns.
_REGISTRY_LOCK = threading.Lock()
OWNER = "lanex-cluster"  # the `python -m lanex_cluster serve` process that owns a `make cluster` control plane


class StartError(RuntimeError):
    """A component did not become healthy; the message names it and quotes its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A program with its arguments, a readiness probe and the log it writes."""

    name: str
    argv: Sequence[str]
    state_dir: Path
    ready: Callable[[], bool] = lambda: True
    env: Mapping[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    # True from start() to stop(): a process that exits while wanted crashed (kill() included),
    # and the cluster's supervisor starts it again, as a kubelet restarts a crashed pod.
    wanted: bool = False
    restarts: int = 0
    # (launched, ready) wall-clock times of every start: when a restarted server was away.
    runs: list[tuple[float, float]] = field(default_factory=list)
    _log_offset: int = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def start(self, timeout: float = 60.0) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(list(self.argv), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                          start_new_session=True, cwd=self.state_dir)
        _register(self.state_dir, self.name, self.popen.pid)
        self.wanted = True
        launched = time.time()
        self.wait_ready(timeout)
        self.runs.append((launched, time.time()))
        return self

    def log_text(self) -> str:
        """What this run of the process logged (a restarted one appends to the same file)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise StartError(f"{self.name} exited with {self.popen.returncode}; its log "
                                 f"({self.log_path}) ends:\n{log_tail(self.log_path)}")
            try:
                if self.ready():
                    return
            except (OSError, ssl.SSLError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise StartError(f"{self.name} was not ready after {timeout:.0f} s; its log ({self.log_path}) "
                         f"ends:\n{log_tail(self.log_path)}")

    def stop(self, grace: float = 10.0) -> None:
        self.wanted = False
        if self.popen is None:
            return
        terminate_group(self.popen.pid, grace)
        self.popen.wait(grace)
        _unregister(self.state_dir, self.name)

    def kill(self) -> None:
        """SIGKILL, like a crash: no cleanup (the restart scenarios)."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def crashed(self) -> bool:
        return self.wanted and self.popen is not None and self.popen.poll() is not None


def terminate_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM to the process group led by `pid`, SIGKILL to what is left after `grace` seconds."""
    try:
        group = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _, alive = psutil.wait_procs(group, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _registry(state_dir: Path) -> dict[str, dict[str, float]]:
    path = state_dir / REGISTRY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def register(state_dir: Path, name: str, pid: int) -> None:
    """Record a process that `stop_registered` (make cluster-down) must end."""
    _register(state_dir, name, pid)


def _register(state_dir: Path, name: str, pid: int) -> None:
    created = psutil.Process(pid).create_time()
    with _REGISTRY_LOCK:
        entries = _registry(state_dir)
        entries[name] = {"pid": pid, "created": created}
        _write_registry(state_dir, entries)


def _unregister(state_dir: Path, name: str) -> None:
    with _REGISTRY_LOCK:
        entries = _registry(state_dir)
        entries.pop(name, None)
        _write_registry(state_dir, entries)


def _write_registry(state_dir: Path, entries: dict[str, dict[str, float]]) -> None:
    path = state_dir / REGISTRY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(path)


def registered_alive(state_dir: Path) -> dict[str, int]:
    """The recorded processes that still run (same pid and start time), by name."""
    alive = {}
    for name, entry in _registry(state_dir).items():
        if _same_process(int(entry["pid"]), entry["created"]):
            alive[name] = int(entry["pid"])
    return alive


def _same_process(pid: int, created: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - created) < 1.0
    except psutil.NoSuchProcess:
        return False


def stop_registered(state_dir: Path) -> list[str]:
    """End every process recorded in `state_dir` (in reverse start order); return their names."""
    entries = _registry(state_dir)
    stopped = []
    # The cluster's owner first: it stops its children itself, and would restart any we stopped.
    ordered = sorted(entries.items(), key=lambda item: item[0] != OWNER)
    for name, entry in [*ordered[:1], *reversed(ordered[1:])]:
        pid = int(entry["pid"])
        if _same_process(pid, entry["created"]):
            terminate_group(pid)
            stopped.append(name)
        _unregister(state_dir, name)
    return stopped


def https_ok(url: str, ca_file: Path | None, client_cert: tuple[Path, Path] | None = None) -> bool:
    """True when `url` answers 200 over TLS verified against `ca_file`.

    `ca_file=None` skips verification: only for the health ports of kube-controller-manager and
    kube-scheduler, which serve a self-signed certificate they make at start-up.
    """
    if ca_file is None:
        context = ssl._create_unverified_context()  # noqa: S323 - see the docstring
    else:
        context = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return response.status == 200


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def tcp_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
