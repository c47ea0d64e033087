"""`make test`: the whole suite as two pytest sessions side by side.

Why: the tests on the real control plane (marker real_cluster, about 60) spend most of their time
waiting for upstream controllers, while the rest keeps the CPUs busy with training processes; run
one after the other they took a quarter of the suite's time for little CPU. Each session has its own
temporary directory (the process guard of tests/process_guard.py finds each one's leftovers by it)
and the real-cluster session takes /tmp/lanex-cluster.lock, since one control plane runs per machine.

The real-cluster session's output goes to a file and is printed after the other session's; the run
fails when either session fails. Arguments are passed to both sessions (e.g. `-x`).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_LOCK = Path("/tmp/lanex-cluster.lock")


def pytest_command(marker: str, basetemp: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-ra", "-m", marker, f"--basetemp={basetemp}", *extra]


def main(extra: list[str]) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="lanex-tests-"))
    started = time.monotonic()
    log_path = scratch / "real-cluster.log"
    with CLUSTER_LOCK.open("a") as lock, log_path.open("w") as log:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when this process ends, however it ends
        cluster = subprocess.Popen(pytest_command("real_cluster", scratch / "cluster", extra), cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            rest = subprocess.run(pytest_command("not real_cluster", scratch / "rest", extra), cwd=ROOT).returncode
            cluster_code = cluster.wait()
        except BaseException:
            cluster.terminate()
            cluster.wait()
            raise
    print(f"\n==== the real-cluster session (marker real_cluster) ====\n{log_path.read_text()}", flush=True)
    print(f"==== both sessions: {'passed' if rest == cluster_code == 0 else 'FAILED'} "
          f"(rest exit {rest}, real-cluster exit {cluster_code}) in {time.monotonic() - started:.0f} s ====")
    return rest or cluster_code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
