"""Processes that end with their parent: no `lanex run` leaves training behind, whatever kills it.

`lanex run` starts `lanex launch`, which starts torchrun (or mpirun/horovodrun) in a session of its
own, which starts the ranks. A SIGKILL (or the OOM killer) gives none of them a chance to clean up,
so each link of the chain arranges its own end instead:

- every process lanex starts gets the kernel's parent-death signal (Linux `PR_SET_PDEATHSIG`),
  set in the child between fork and exec (`preexec_die_with_parent`), so torchrun dies with
  `lanex launch` and `sh` with `lanex run`;
- processes that lanex does not start itself (torchrun's ranks, mpirun's) are `lanex` commands:
  the parent exports `LANEX_DIE_WITH_PARENT=1` and every `lanex` command arms itself at start-up
  (`arm_from_env`): the parent-death signal, plus a watchdog thread that polls `getppid()`, which
  also covers systems without prctl (macOS) and a parent that died before the signal was armed.

A `lanex` command run by hand (no variable) is left alone: `nohup lanex train ...` must survive
the shell that started it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from typing import Callable, Mapping, Optional

ENV_FLAG = "LANEX_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL_S = 1.0

_cleanups: list[Callable[[], None]] = []
_armed = False


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    """The C library of this process (Linux), for prctl; None elsewhere."""
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `signum` to this process when its parent ends (Linux only)."""
    libc = _libc()
    if libc is None:
        return False
    return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def preexec_die_with_parent(parent_pid: Optional[int] = None) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the child gets SIGKILL when the calling process ends.

    The signal follows the thread that forked, so call Popen from a thread that lives as long as
    the child (lanex starts its children from the main thread).
    """
    parent = os.getpid() if parent_pid is None else parent_pid
    _libc()  # loaded here, in the parent: the child between fork and exec must not load libraries

    def arm() -> None:
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:  # the parent ended between fork and prctl
            os._exit(1)

    return arm


def on_orphaned(cleanup: Callable[[], None]) -> None:
    """Run `cleanup` (e.g. kill a child's process group) before an armed process exits as an orphan."""
    _cleanups.append(cleanup)


def _orphaned(reason: str) -> None:
    print(f"lanex: {reason}; stopping (pid {os.getpid()})", file=sys.stderr, flush=True)
    for cleanup in _cleanups:
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - nothing may keep an orphan alive
            pass
    os._exit(1)


def _watch(parent: int, interval_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    _orphaned(f"parent process {parent} is gone")


def die_with_parent(interval_s: float = WATCH_INTERVAL_S) -> None:
    """Arm this process to end with its parent: parent-death signal plus a getppid watchdog."""
    global _armed
    if _armed:
        return
    _armed = True
    parent = os.getppid()
    if parent == 1:  # already re-parented to init: the process that started us is gone
        _orphaned("started by a process that is already gone")
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        _orphaned(f"parent process {parent} ended while lanex started")
    threading.Thread(target=_watch, args=(parent, interval_s), name="lanex-lifeline", daemon=True).start()


def arm_from_env(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Arm `die_with_parent` when the parent asked for it (LANEX_DIE_WITH_PARENT=1); True if armed."""
    env = os.environ if environ is None else environ
    if env.get(ENV_FLAG) != "1":
        return False
    die_with_parent()
    return True
