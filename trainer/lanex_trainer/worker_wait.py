"""Wait until every worker of an MPIJob answers on its ssh port, before mpirun/horovodrun starts.

Why it exists: with an mpi-operator older than 0.5.0 (no `launcherCreationPolicy: WaitForWorkersReady`)
the launcher starts while the workers are still pulling a multi-GB image; their headless Service
publishes no address for a pod that is not Ready, so Horovod's ssh checks fail at once and each
failure costs one of the launcher's `backoffLimit` restarts. `lanex launch` therefore first waits,
for a bounded time, until each host of the hostfile resolves and accepts a TCP connection on the
ssh port; the error names the host that never came up. With WaitForWorkersReady the hosts are
already up and the wait returns at once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_SSH_PORT = 2222  # the trainer image's sshd (Dockerfile.trainer, SSH_PORT)
DEFAULT_WAIT_SECONDS = 600.0


class WorkerWaitError(RuntimeError):
    """A worker host did not resolve or accept connections in time."""


def hostfile_hosts(hostfile: Path) -> list[str]:
    """The hosts of an MPI hostfile (`host slots=N` or `host:N` lines; comments and blanks ignored)."""
    hosts = []
    for line in hostfile.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            host = line.split()[0].split(":")[0]
            if host not in hosts:
                hosts.append(host)
    return hosts


def remote_hosts(hosts: Sequence[str]) -> list[str]:
    """The hosts mpirun reaches over ssh: all but `localhost` and this machine's own name (a local run's
    hostfile, or the launcher itself when it also runs a worker)."""
    local = {"localhost", socket.gethostname(), socket.gethostname().split(".")[0]}
    return [host for host in hosts if host not in local]


def probe(host: str, port: int, timeout: float) -> str | None:
    """None when `host` resolves and accepts TCP on `port`, else why not."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return f"does not resolve ({error.strerror or error})"
    last = "no address"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as connection:
            connection.settimeout(timeout)
            try:
                connection.connect(address)
                return None
            except OSError as error:
                last = f"does not accept connections on port {port} ({error.strerror or error})"
    return last


def wait_for_hosts(hosts: Sequence[str], port: int, timeout: float, *, interval: float = 1.0,
                   echo: Callable[[str], None] = lambda _text: None,
                   clock: Callable[[], float] = time.monotonic) -> None:
    """Return once every host is up; WorkerWaitError naming the first one still down after `timeout`."""
    deadline = clock() + timeout
    pending = list(hosts)
    reasons: dict[str, str] = {}
    announced = False
    while True:
        remaining = deadline - clock()
        for host in list(pending):
            reason = probe(host, port, timeout=max(0.1, min(2.0, remaining)))
            if reason is None:
                pending.remove(host)
            else:
                reasons[host] = reason
        if not pending:
            return
        if clock() >= deadline:
            host = pending[0]
            others = f" (and {len(pending) - 1} more: {', '.join(pending[1:])})" if len(pending) > 1 else ""
            raise WorkerWaitError(f"worker {host} never came up: after {timeout:g}s it {reasons[host]}{others}; "
                                  f"check that pod's events (image pull, scheduling) with kubectl describe pod")
        if not announced:
            echo(f"lanex launch: waiting up to {timeout:g}s for {len(pending)} worker(s) to accept ssh on port {port}: "
                 f"{', '.join(pending)}")
            announced = True
        time.sleep(max(0.0, min(interval, deadline - clock())))
