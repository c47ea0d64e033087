"""The suite leaves no process behind: a session fails when a process its tests started outlives them.

Imported by tests/conftest.py (its hooks run for every session). At session start every process
the tests will start inherits a marker variable; at session finish the guard gives the processes
found (descendants of pytest, marked processes even when re-parented to init, and lanex/torchrun/
mpirun commands naming this session's temporary directory) a grace period, then lists, kills and
fails the run for those still alive.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

# Every process the tests start inherits this marker, so the session can find its own leftovers
# even after they were re-parented to init (an orphaned torchrun is no descendant of pytest).
SESSION_MARKER = "LANEX_TEST_SESSION"
# Children get this long to exit after the last test before they count as left behind.
LEFTOVER_GRACE_S = 10.0
# Process names that, with this session's temporary directory in their command line, are ours.
LANEX_PROGRAMS = ("lanex", "torchrun", "mpirun", "horovodrun", "prterun", "orted")
# Helpers of the pytest process itself (they end with it, not with a test).
PYTEST_OWN_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[SESSION_MARKER] = f"{os.getpid()}-{uuid.uuid4().hex}"


def _session_processes(session: pytest.Session) -> list[Any]:
    """Live processes this session started: descendants, marked ones, lanex programs on its tmp dir."""
    import psutil

    me = psutil.Process()
    marker = os.environ.get(SESSION_MARKER)
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = f"{factory.getbasetemp()}{os.sep}" if factory is not None and factory._basetemp is not None else None
    found = {child.pid: child for child in me.children(recursive=True)}
    for process in psutil.process_iter(["pid", "cmdline", "uids"]):
        if process.pid == me.pid or process.pid in found or process.info["uids"] is None:
            continue
        if process.info["uids"].real != os.getuid():
            continue
        try:
            mine = marker is not None and process.environ().get(SESSION_MARKER) == marker
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            mine = False
        command = " ".join(process.info["cmdline"] or [])
        if not mine and basetemp is not None and basetemp in command:
            mine = any(Path(word).name in LANEX_PROGRAMS for word in (process.info["cmdline"] or [])[:3])
        if mine:
            found[process.pid] = process
    alive = []
    for process in found.values():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(helper in " ".join(process.cmdline()) for helper in PYTEST_OWN_HELPERS):
                continue
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        alive.append(process)
    return alive


def _still_running(process: Any) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def _describe(process: Any) -> str:
    try:
        age = time.time() - process.create_time()
        return f"pid {process.pid} (parent {process.ppid()}, {age:.0f} s old): {' '.join(process.cmdline())[:300]}"
    except Exception:  # noqa: BLE001 - it ended while we looked
        return f"pid {process.pid} (ended while being listed)"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process started by the tests outlives them (after a short grace period)."""
    import psutil

    leftovers = _session_processes(session)
    if not leftovers:
        return
    _, alive = psutil.wait_procs(leftovers, timeout=LEFTOVER_GRACE_S)
    alive = [process for process in alive if _still_running(process)]
    if not alive:
        return
    lines = [_describe(process) for process in alive]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    title = f"{len(alive)} process(es) started by the tests still alive {LEFTOVER_GRACE_S:.0f} s after the last test"
    if reporter is not None:
        reporter.write_sep("=", title, red=True, bold=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print(title, *lines, sep="\n")
    for process in alive:  # a process the tests started is a process they end
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
