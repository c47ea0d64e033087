"""Helpers for trainer end-to-end tests: run the real `lanex` command of this venv."""

import os
import subprocess
import sys
from pathlib import Path


VENV_BIN = Path(sys.executable).parent
LANEX = str(VENV_BIN / "lanex")


def run_lanex(*args: str, env: dict | None = None, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    merged = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    merged["PATH"] = f"{VENV_BIN}:{merged.get('PATH', '')}"
    done = subprocess.run([LANEX, *args], env=merged, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"lanex {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


