"""Every shell block of Getting started's local path runs, in order, in an empty directory, and prints
what the page says it prints.

The cluster path (docs/getting-started/cluster.md) runs on the real control plane:
tests/test_docs_getting_started_cluster.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from docs_site import DOCS, environment, shell_blocks

LAPTOP = DOCS / "getting-started" / "laptop.md"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """(block, its stdout and stderr) of every block of the laptop page, run one after another."""
    workdir = tmp_path_factory.mktemp("getting-started")
    done = []
    for block in shell_blocks(LAPTOP):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=workdir, env=environment(),
                                capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"block failed (exit {result.returncode}):\n{block}\n{result.stdout}\n{result.stderr}"
        done.append((block, result.stdout + result.stderr))
    return done


def output_of(outputs: list[tuple[str, str]], command: str, nth: int = 0) -> str:
    matches = [out for block, out in outputs if command in block]
    assert len(matches) > nth, f"no block runs {command!r}"
    return matches[nth]


@pytest.mark.slow
def test_the_laptop_page_runs_an_experiment_to_its_snapshot(outputs: list[tuple[str, str]]) -> None:
    assert len(outputs) >= 6
    usage = output_of(outputs, "lanex --help")
    assert "Usage: lanex" in usage and re.search(r"│ run +Run a LaneExperiment on this machine", usage)
    run = output_of(outputs, "lanex run first.yaml")
    for step in ("dataset", "prepare", "share", "train", "snapshot"):
        assert f"[lanex] {step}: running" in run
    rows = [line.split() for line in run.splitlines()]
    assert ["NAME", "PHASE", "WORKERS", "ACCURACY", "FP", "FN", "SNAPSHOT", "DURATION"] in rows
    assert any(row[:3] == ["first", "Succeeded", "2"] and row[6].startswith("first-") for row in rows if len(row) == 8)
    written = {"results:": "results.json", "curves:": "curves.png", "worst:": "worst.png", "overlays:": "overlays",
               "checkpoint:": "best.pt"}
    for label, name in written.items():
        assert any(
            row[0] == label and row[1].endswith(f"/.lanex/volumes/first-data/experiments/first/{name}")
            for row in rows if len(row) == 2), label


@pytest.mark.slow
def test_the_laptop_page_lists_restores_and_reruns_as_it_says(outputs: list[tuple[str, str]]) -> None:
    listed = output_of(outputs, "lanex get --workspace .lanex").splitlines()
    assert listed[0].split()[:2] == ["NAME", "PHASE"]
    assert listed[1].split()[:2] == ["first", "Succeeded"]
    restored = output_of(outputs, "lanex snapshots restore")
    assert restored.startswith("first-") and "into .lanex/volumes/first-restored (verified)" in restored
    rerun = output_of(outputs, "lanex run first.yaml", nth=1)
    for step in ("dataset", "prepare", "share", "train", "snapshot"):
        assert f"[lanex] {step}: already done, skipping" in rerun
    assert "Succeeded" in rerun
