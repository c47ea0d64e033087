"""Shared fixtures for trainer end-to-end tests: a small prepared synthetic TuSimple set."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
LANEX = str(VENV_BIN / "lanex")


def run_lanex(*args: str, env: dict | None = None, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    merged = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    merged["PATH"] = f"{VENV_BIN}:{merged.get('PATH', '')}"
    done = subprocess.run([LANEX, *args], env=merged, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"lanex {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """24 training+validation clips and 5 test clips, synthesised and prepared."""
    root = tmp_path_factory.mktemp("tusimple") / "data"
    run_lanex("data", "synth", "--out", str(root), "--clips", "24", "--test-clips", "5", "--seed", "7")
    run_lanex("data", "prepare", "--root", str(root))
    return root
