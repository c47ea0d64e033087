"""`lanex launch` waits for the workers' ssh before starting (mpi-operator older than 0.5.0).

Real sockets on 127.0.0.1: a port where nothing listens stands for a worker still pulling its image;
a listener that starts later for one that comes up late.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lanex_trainer.worker_wait import WorkerWaitError, hostfile_hosts, remote_hosts, wait_for_hosts

pytestmark = pytest.mark.timeout(60)
LANEX = Path(sys.executable).with_name("lanex")


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_hostfile_hosts_reads_mpi_operator_hostfile_lines(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# workers\nexp-train-worker-0.exp-train.default.svc slots=2\n"
                        "exp-train-worker-1.exp-train.default.svc:2\n\nexp-train-worker-0.exp-train.default.svc slots=2\n")
    assert hostfile_hosts(hostfile) == ["exp-train-worker-0.exp-train.default.svc",
                                        "exp-train-worker-1.exp-train.default.svc"]


def test_local_hosts_need_no_ssh_and_are_not_waited_for():
    assert remote_hosts(["localhost", socket.gethostname(), "exp-train-worker-0.exp-train"]) == [
        "exp-train-worker-0.exp-train"]


def test_a_worker_that_never_listens_fails_the_wait_naming_it():
    port = free_port()
    with pytest.raises(WorkerWaitError) as caught:
        wait_for_hosts(["127.0.0.1"], port, timeout=1.0, interval=0.2)
    message = str(caught.value)
    assert message.startswith("worker 127.0.0.1 never came up: after 1s it does not accept connections on port "
                              f"{port}")


def test_a_worker_that_comes_up_late_lets_the_launch_proceed():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        timer = threading.Timer(0.8, listener.listen)  # sshd starts once the image is pulled
        timer.start()
        lines: list[str] = []
        try:
            wait_for_hosts(["127.0.0.1"], port, timeout=20.0, interval=0.1, echo=lines.append)
        finally:
            timer.cancel()
    assert lines == [f"lanex launch: waiting up to 20s for 1 worker(s) to accept ssh on port {port}: 127.0.0.1"]


def test_launch_in_an_mpijob_launcher_reports_the_worker_that_never_came_up(tmp_path):
    port = free_port()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n")
    termination = tmp_path / "termination-log"
    result = subprocess.run(
        [str(LANEX), "launch", "--termination-log", str(termination), "--", "true"],
        env={**{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")},
             "PATH": str(LANEX.parent) + ":/usr/bin:/bin", "LANEX_MPI_HOSTFILE": str(hostfile),
             "LANEX_WORKER_WAIT_SECONDS": "1", "LANEX_SSH_PORT": str(port)},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"training failed: worker 127.0.0.1 never came up: after 1s it does not accept connections on port {port}" \
        in result.stderr
    assert termination.read_text().startswith("training failed: worker 127.0.0.1 never came up")
