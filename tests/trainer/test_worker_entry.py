"""`lanex worker`, a worker pod's PID 1 around sshd: on SIGTERM the `lanex train` processes below it
checkpoint and leave before sshd (and with it the container) ends. Real processes: a stand-in sshd
that starts a stand-in rank, as orted would under sshd."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from lanex_trainer.worker_entry import is_lanex_train
from trainer_helpers import LANEX

# A `lanex train` stand-in: on SIGTERM it "checkpoints" (a file) after a moment and exits 0, or ignores it.
FAKE_RANK = """#!{python}
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[2])
def stop(signum, frame):
    time.sleep(0.5)
    out.joinpath("checkpointed").write_text("yes")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if out.joinpath("stubborn").exists() else stop)
out.joinpath("rank.pid").write_text(str(__import__("os").getpid()))
while True:
    time.sleep(0.1)
"""


def _start(tmp_path: Path, grace: str) -> subprocess.Popen:
    fake = tmp_path / "bin" / "lanex"
    fake.parent.mkdir()
    fake.write_text(FAKE_RANK.format(python=sys.executable))
    fake.chmod(0o755)
    sshd = f"{fake} train {tmp_path} & exec sleep 600"  # the "sshd" below which the rank runs
    process = subprocess.Popen([LANEX, "worker", "--grace-seconds", grace, "--", "sh", "-c", sshd],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "rank.pid").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    return process


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigterm_lets_the_ranks_checkpoint_before_sshd_stops(tmp_path):
    process = _start(tmp_path, "60")
    sshd = psutil.Process(process.pid).children()[0].pid
    rank = int((tmp_path / "rank.pid").read_text())
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        for pid in (rank, sshd):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert (tmp_path / "checkpointed").read_text() == "yes"
    assert "SIGTERM: 1 training process(es) finish their step and checkpoint it (at most 60 s), then sh stops" in stderr
    assert _gone(rank) and _gone(sshd)


def test_a_rank_that_outlives_the_grace_period_is_killed(tmp_path):
    (tmp_path / "stubborn").write_text("")
    process = _start(tmp_path, "1")
    rank = int((tmp_path / "rank.pid").read_text())
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if not _gone(rank):
            os.kill(rank, signal.SIGKILL)
    assert process.returncode == 0
    assert "1 training process(es) still running after 1 s; killing them" in stderr
    assert not (tmp_path / "checkpointed").exists()


def test_only_lanex_train_command_lines_count_as_ranks():
    assert is_lanex_train(["/usr/bin/python3", "/usr/local/bin/lanex", "train", "--data-root", "/mnt"])
    assert is_lanex_train(["lanex", "train"])
    assert not is_lanex_train(["lanex", "launch", "--", "lanex"])
    assert not is_lanex_train(["/usr/sbin/sshd", "-De"]) and not is_lanex_train([])
