"""Shared fixtures for trainer end-to-end tests: a small prepared synthetic TuSimple set."""

from pathlib import Path

import pytest
from trainer_helpers import run_lanex


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """24 training+validation clips and 5 test clips, synthesised and prepared."""
    root = tmp_path_factory.mktemp("tusimple") / "data"
    run_lanex("data", "synth", "--out", str(root), "--clips", "24", "--test-clips", "5", "--seed", "7")
    run_lanex("data", "prepare", "--root", str(root))
    return root
