"""Processes lanex starts end with their parent, even when the parent is SIGKILLed (real processes)."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from lanex_trainer import lifeline
from trainer_helpers import LANEX, VENV_BIN

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")


def _parent_of(child_code: str, **env: str) -> tuple[subprocess.Popen, int]:
    """A python parent process that starts `child_code` as its child; returns (parent, child pid)."""
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from lanex_trainer import lifeline
        child = subprocess.Popen([sys.executable, "-c", {child_code!r}], {"preexec_fn=lifeline.preexec_die_with_parent()" if not env else ""})
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **env})
    # The parent prints its child's pid; the child (sharing the pipe) prints "armed" when it is.
    lines = {parent.stdout.readline().strip() for _ in range(2)}
    assert "armed" in lines, lines
    return parent, int(next(line for line in lines if line != "armed"))


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _kill_parent_then_check(parent: subprocess.Popen, child: int) -> None:
    assert psutil.pid_exists(child)
    parent.kill()  # SIGKILL: the parent gets no chance to clean up
    parent.wait()
    try:
        assert _gone_within(child, 5), "the child outlived its SIGKILLed parent"
    finally:
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)


def test_a_program_started_with_the_preexec_dies_with_its_sigkilled_parent():
    parent, child = _parent_of("import time; print('armed', flush=True); time.sleep(600)")
    _kill_parent_then_check(parent, child)


def test_a_lanex_process_armed_from_the_environment_dies_with_its_sigkilled_parent():
    armed = ("from lanex_trainer import lifeline; import time; assert lifeline.arm_from_env(); "
             "print('armed', flush=True); time.sleep(600)")
    parent, child = _parent_of(armed, **{lifeline.ENV_FLAG: "1"})
    _kill_parent_then_check(parent, child)


def test_without_the_parent_death_signal_the_watchdog_still_ends_the_orphan():
    # As on macOS: no prctl, only the getppid() watchdog.
    watched = ("from lanex_trainer import lifeline; import time; lifeline.set_parent_death_signal = lambda *a: False; "
               "lifeline.die_with_parent(interval_s=0.2); print('armed', flush=True); time.sleep(600)")
    parent, child = _parent_of(watched, **{lifeline.ENV_FLAG: "1"})
    _kill_parent_then_check(parent, child)


def test_a_lanex_command_run_by_hand_is_not_tied_to_its_shell():
    assert lifeline.arm_from_env({}) is False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")
def test_mpirun_and_its_ranks_end_with_a_sigkilled_lanex_launch_parent(prepared_data, tmp_path):
    # The MPIJob launcher's chain: lanex launch -> mpirun -> lanex train ranks (here on localhost).
    out = tmp_path / "out"
    launch = [LANEX, "launch", "--launcher", "mpirun", "--backend", "torch", "--processes", "2", "--", "lanex", "train",
              "--data-root", str(prepared_data), "--output-dir", str(out), "--backbone", "small", "--height", "64",
              "--width", "160", "--batch-size", "2", "--epochs", "100", "--loader-workers", "0", "--no-val",
              "--checkpoint-every", "1"]
    parent_code = textwrap.dedent(f"""
        import subprocess, time
        from lanex_trainer import lifeline
        child = subprocess.Popen({launch!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 preexec_fn=lifeline.preexec_die_with_parent())
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}", lifeline.ENV_FLAG: "1"}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=env)
    launch_pid = int(parent.stdout.readline())
    tree = [psutil.Process(launch_pid)]
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("checkpoint-*.pt")):
            assert parent.poll() is None and time.monotonic() < deadline, "training never checkpointed"
            time.sleep(0.2)
        tree += tree[0].children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in tree]
        assert any(c.startswith("mpirun") for c in commands) and sum("bin/lanex train" in c for c in commands) == 2, commands
    finally:
        parent.kill()
        parent.wait()
    survivors = [p.pid for p in tree if not _gone_within(p.pid, 10)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
