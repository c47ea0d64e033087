"""`lanex worker -- COMMAND`: a worker pod's entry point (PID 1), around its sshd.

mpirun starts the ranks over ssh, so they are descendants of the worker's sshd. When the pod is
deleted (an eviction, Kueue suspending the MPIJob, a node drain) the kubelet sends SIGTERM to PID 1
only, and once PID 1 ends the kernel kills everything else in the container at once: with sshd as
PID 1 the ranks would die mid-step and nothing would be checkpointed. This entry point is PID 1
instead: on SIGTERM (or SIGINT) it passes the signal on to the `lanex train` processes below it,
which finish their step, checkpoint it and leave (lanex_trainer.preemption); it waits for that at
most the grace period (`LANEX_TERMINATION_GRACE_SECONDS`, the pod's terminationGracePeriodSeconds),
then stops the command. As PID 1 it also reaps the orphans re-parented to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

POLL_SECONDS = 0.2
COMMAND_STOP_SECONDS = 10.0  # after the ranks: how long the command (sshd) gets to exit before SIGKILL


def _parents(proc: Path) -> dict[int, int]:
    """pid -> parent pid of every visible process (Linux /proc)."""
    parents = {}
    for entry in proc.glob("[0-9]*"):
        try:
            # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces and parentheses.
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return parents


def is_lanex_train(argv: Sequence[str]) -> bool:
    """`lanex train ...` however it was started (`/usr/local/bin/lanex train`, `python .../lanex train`)."""
    return any(Path(word).name == "lanex" and argv[i + 1] == "train" for i, word in enumerate(argv[:-1]))


def rank_processes(root: Optional[int] = None, proc: Path = Path("/proc")) -> list[int]:
    """The `lanex train` processes descended from `root` (default: this process)."""
    root = os.getpid() if root is None else root
    parents = _parents(proc)
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if is_lanex_train([word for word in argv if word]):
            found.append(pid)
    return sorted(found)


def _signal_all(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def supervise(command: Sequence[str], grace_seconds: float, echo: Callable[[str], None] = print,
              find_ranks: Callable[[], list[int]] = rank_processes) -> int:
    """Run `command` until it ends, or until a stop signal's ranks have left; returns the exit code."""
    try:
        child = subprocess.Popen(list(command))
    except FileNotFoundError:
        echo(f"error: {command[0]} is not installed or not on PATH")
        return 2
    requested: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: requested.append(signum))
                for signum in (signal.SIGTERM, signal.SIGINT)}
    ranks_deadline: Optional[float] = None
    command_deadline: Optional[float] = None
    try:
        while True:
            code = _reap(child)
            if code is not None:
                return 0 if command_deadline is not None else code
            now = time.monotonic()
            if requested and ranks_deadline is None:
                ranks = find_ranks()
                echo(f"lanex worker: {signal.Signals(requested[0]).name}: {len(ranks)} training process(es) finish "
                     f"their step and checkpoint it (at most {grace_seconds:g} s), then {command[0]} stops")
                _signal_all(ranks, signal.SIGTERM)
                ranks_deadline = now + grace_seconds
            if ranks_deadline is not None and command_deadline is None:
                left = find_ranks()
                if left and now >= ranks_deadline:
                    echo(f"lanex worker: {len(left)} training process(es) still running after {grace_seconds:g} s; "
                         "killing them")
                    _signal_all(left, signal.SIGKILL)
                    left = []
                if not left:
                    child.send_signal(signal.SIGTERM)
                    command_deadline = now + COMMAND_STOP_SECONDS
            if command_deadline is not None and now >= command_deadline:
                child.kill()
            time.sleep(POLL_SECONDS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _reap(child: subprocess.Popen) -> Optional[int]:
    """Reap every exited child (as PID 1, orphans too); the command's exit code once it has ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children at all
            return child.returncode if child.returncode is not None else child.poll()
        if pid == 0:
            return None
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode


def main(command: Sequence[str], grace_seconds: float) -> int:
    return supervise(command, grace_seconds, echo=lambda text: print(text, file=sys.stderr, flush=True))
