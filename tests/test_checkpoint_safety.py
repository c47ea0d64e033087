"""Checkpoints are data: a planted `.pt` whose pickle would run code is refused, never executed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lanex_trainer.checkpoint import UnsafeCheckpointError, load_checkpoint, load_latest_checkpoint, save_checkpoint


class PlantedPayload:
    """Unpickling this object runs `os.system("touch MARKER")`: what an attacker would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path, step: int = 20) -> Path:
    """A file that looks like a lanex checkpoint, with the payload inside its config."""
    torch.save({"model": {"w": torch.zeros(1)}, "step": step, "config": PlantedPayload(marker)}, path)
    return path


def test_the_planted_file_really_runs_code_when_unpickled_unsafely(tmp_path: Path):
    """Control: the crafted file is a working exploit for `weights_only=False` (so the other tests mean something)."""
    marker = tmp_path / "control-marker"
    path = plant(tmp_path / "checkpoint-000000020.pt", marker)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    assert marker.exists()


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_naming_the_file_and_the_global(tmp_path: Path):
    marker = tmp_path / "marker"
    path = plant(tmp_path / "checkpoint-000000020.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint .*checkpoint-000000020.pt was refused: it needs posix.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_resume_skips_a_planted_checkpoint_with_a_warning_and_takes_the_previous_one(tmp_path: Path, caplog):
    marker = tmp_path / "marker"
    save_checkpoint({"model": {"w": torch.ones(1)}, "step": 10}, tmp_path, 10, keep=3)
    plant(tmp_path / "checkpoint-000000020.pt", marker)
    with caplog.at_level("WARNING"):
        path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "checkpoint-000000010.pt" and state["step"] == 10
    assert "checkpoint-000000020.pt was refused" in caplog.text and "falling back to the previous one" in caplog.text
    assert not marker.exists()


def test_lanex_predict_refuses_a_planted_checkpoint_with_exit_2(tmp_path: Path):
    import cv2
    import numpy as np

    marker = tmp_path / "marker"
    path = plant(tmp_path / "best.pt", marker)
    image = tmp_path / "images" / "20.jpg"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros((720, 1280, 3), np.uint8))
    lanex = Path(sys.executable).with_name("lanex")
    result = subprocess.run([str(lanex), "predict", "--checkpoint", str(path), "--images", str(image.parent),
                             "--out", str(tmp_path / "out"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 2, result.stderr
    assert "best.pt was refused: it needs posix.system" in result.stderr
    assert not marker.exists()


def test_everything_a_training_run_writes_is_read_back_under_the_allowlist(tmp_path: Path):
    """The real payload: model, SGD + LambdaLR state, RNG states (numpy's is an ndarray), config, history, run id."""
    from lanex_trainer.config import TrainConfig
    from lanex_trainer.train import restore_rng_state, rng_state, warmup_poly

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_poly(100, 5, 0.9))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    config = TrainConfig(data_root=tmp_path, output_dir=tmp_path)
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "epoch": 1, "batch_in_epoch": 0, "step": 7, "rng": rng_state(torch.device("cpu")),
        "config": config.model_dump(mode="json"), "fingerprint": config.fingerprint(),
        "history": [{"epoch": 0, "step": 7, "train_loss": 0.5, "val_accuracy": 0.9}],
        "best": {"score": [0.9, -0.4], "epoch": 0, "step": 7}, "world_size": 1, "run_id": "run-3f2a",
    }
    path = save_checkpoint(state, tmp_path / "checkpoints", 7, keep=3)
    expected = torch.rand(3)
    loaded = load_checkpoint(path)
    restore_rng_state(loaded["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)
    assert loaded["config"] == state["config"] and loaded["run_id"] == "run-3f2a"
    assert loaded["history"] == state["history"]
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    assert torch.equal(loaded["model"]["0.weight"], model.state_dict()["0.weight"])
