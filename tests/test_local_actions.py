"""`lanex stop NAME --workspace` and `lanex delete NAME --workspace` (the actions `lanex ui --allow-actions`
offers): a training run stopped as Ctrl-C would stop it, resumable; deletion refused while it runs,
then applied with the experiment's retention."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

LANEX = str(Path(sys.executable).parent / "lanex")

pytestmark = pytest.mark.slow


def lanex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LANEX, *args], capture_output=True, text=True, timeout=120)


def test_stop_ends_a_training_run_resumably_and_delete_applies_retention(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    file = tmp_path / "long.yaml"
    file.write_text(yaml.safe_dump({
        "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": "long"},
        "spec": {"dataset": {"synthetic": {"clips": 12, "seed": 1}, "size": "1Gi"},
                 "training": {"backend": "torch", "backbone": "small", "workers": 1, "gpusPerWorker": 0,
                              "batchSize": 2, "loaderWorkers": 0, "useWorkers": False, "epochs": 200,
                              "validation": {"enabled": False}, "height": 32, "width": 64, "largeShm": False},
                 "retention": {"dataset": "Delete", "snapshots": "Retain"}}}))
    state_file = workspace / "experiments" / "long" / "state.json"
    run = subprocess.Popen([LANEX, "run", str(file), "--workspace", str(workspace)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        progress = workspace / "volumes" / "long-data" / "experiments" / "long" / "progress.json"
        while not (progress.is_file() and json.loads(progress.read_text()).get("step", 0) > 0):
            assert time.monotonic() < deadline and run.poll() is None, "training never started"
            time.sleep(0.2)
        refused = lanex("delete", "long", "--workspace", str(workspace))
        assert refused.returncode == 1 and "is running" in refused.stderr
        stopped = lanex("stop", "long", "--workspace", str(workspace))
        assert stopped.returncode == 0 and "stop" in stopped.stdout, stopped.stderr
        assert run.wait(timeout=120) == 130  # interrupted, as with Ctrl-C
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    state = json.loads(state_file.read_text())
    assert state["phase"] == "Failed" and "resume" in state["message"]
    again = lanex("stop", "long", "--workspace", str(workspace))
    assert again.returncode == 1 and "not running" in again.stderr
    deleted = lanex("delete", "long", "--workspace", str(workspace))
    assert deleted.returncode == 0, deleted.stderr
    assert "removes: " in deleted.stdout and "(retention.dataset: Delete)" in deleted.stdout
    assert not state_file.parent.exists() and not (workspace / "volumes" / "long-data").exists()
    assert lanex("delete", "long", "--workspace", str(workspace)).returncode == 1
