"""The suite's own guard: a pytest session fails when a process its tests started outlives them.

tests/process_guard.py checks at session finish; here an inner pytest session (a real subprocess using
that conftest's hooks) starts a process that escapes its parent, as an orphaned torchrun does.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

ESCAPED_CHILD = textwrap.dedent("""
    import subprocess, sys

    def test_starts_a_process_that_escapes_its_parent():
        # A grandchild in its own session whose parent exits at once: re-parented to init, like an orphan.
        subprocess.run([sys.executable, "-c",
                        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
                        "start_new_session=True)"], check=True)
""")

CHILD_THAT_ENDS = textwrap.dedent("""
    import subprocess, sys

    def test_starts_a_process_that_ends_within_the_grace_period():
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
""")


def _inner_session(tmp_path: Path, test_code: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text("from process_guard import pytest_sessionfinish, pytest_sessionstart  # noqa: F401\n")
    (tmp_path / "test_inner.py").write_text(test_code)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("LANEX_TEST_SESSION", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           "-c", os.devnull, str(tmp_path / "test_inner.py")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.slow
def test_a_session_whose_test_leaves_an_orphan_fails_and_lists_it(tmp_path):
    done = _inner_session(tmp_path, ESCAPED_CHILD)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 process(es) started by the tests still alive 10 s after the last test" in done.stdout
    assert "time.sleep(120)" in done.stdout


def test_a_child_that_exits_within_the_grace_period_is_not_a_leftover(tmp_path):
    done = _inner_session(tmp_path, CHILD_THAT_ENDS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "still alive" not in done.stdout
