"""`lanex train` / `lanex eval` / `lanex predict` end to end on a small synthetic set (real JPEGs, CPU)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from trainer_helpers import LANEX, VENV_BIN, run_lanex

TINY = ["--backbone", "small", "--height", "64", "--width", "160", "--batch-size", "4", "--loader-workers", "0",
        "--val-batch-size", "8", "--lr", "0.02", "--warmup-iterations", "2"]


def _steps(output: Path) -> dict[int, float]:
    """step -> loss from train_log.jsonl (a resumed run's newer line for a step wins)."""
    losses = {}
    for line in (output / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


@pytest.fixture(scope="module")
def trained(prepared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    run_lanex("train", "--data-root", str(prepared_data), "--output-dir", str(out), "--epochs", "2", *TINY)
    return out


def test_training_writes_results_checkpoints_curves_overlays_and_tensorboard(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["epochs"] == 2 and results["steps"] == len(_steps(trained)) > 0
    assert set(results["test"]) >= {"accuracy", "fp", "fn", "images"} and results["test"]["images"] == 5
    assert results["accuracy"] == results["test"]["accuracy"]
    assert len(results["history"]) == 2 and "val_accuracy" in results["history"][0]
    assert Path(results["checkpoint"]).is_file()
    assert (trained / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((trained / "overlays").glob("*.png"))) == 5
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in (trained / "checkpoints").iterdir()]  # periodic + epoch-end checkpoints


def test_eval_of_written_test_predictions_matches_the_reported_metric(trained, prepared_data):
    done = run_lanex("eval", "--pred", str(trained / "test_predictions.json"),
                     "--gt", str(prepared_data / "test_label.json"), "--json")
    scores = json.loads(done.stdout)
    results = json.loads((trained / "results.json").read_text())
    assert scores["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-12)
    assert scores["fp"] == pytest.approx(results["test"]["fp"], abs=1e-12)


def test_predict_writes_tusimple_lines_with_measured_run_time_and_overlays(trained, prepared_data, tmp_path):
    done = run_lanex("predict", "--checkpoint", str(trained / "final.pt"), "--images",
                     str(prepared_data / "clips"), "--out", str(tmp_path))
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [json.loads(l) for l in (tmp_path / "predictions.json").read_text().splitlines()]
    assert summary["images"] == len(lines) == 29
    assert all(l["run_time"] > 0 and l["raw_file"].endswith("20.jpg") for l in lines)
    assert all(len(lane) == len(l["h_samples"]) for l in lines for lane in l["lanes"])
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 29


def test_predict_reports_a_corrupt_image_by_path_and_goes_on(trained, prepared_data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good = next((prepared_data / "clips").rglob("20.jpg"))
    (images / "good.jpg").write_bytes(good.read_bytes())
    (images / "broken.jpg").write_bytes(good.read_bytes()[:2000])
    done = run_lanex("predict", "--checkpoint", str(trained / "final.pt"), "--images", str(images),
                     "--out", str(tmp_path / "out"), "--no-overlays")
    assert "broken.jpg" in done.stdout and json.loads(done.stdout.strip().splitlines()[-1])["skipped"] == 1


def test_train_on_unprepared_data_is_a_clear_error(tmp_path):
    done = run_lanex("train", "--data-root", str(tmp_path), "--output-dir", str(tmp_path / "o"), *TINY, check=False)
    assert done.returncode == 2 and "not prepared" in done.stderr


def _start_train(prepared_data: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    return subprocess.Popen([LANEX, "train", "--data-root", str(prepared_data), "--output-dir", str(out),
                             "--checkpoint-every", "2", "--no-val", *TINY, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_on_the_same_loss_trajectory(prepared_data, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run_lanex("train", "--data-root", str(prepared_data), "--output-dir", str(uninterrupted), "--epochs", "3",
              "--checkpoint-every", "2", "--no-val", *TINY)
    reference = _steps(uninterrupted)

    interrupted = tmp_path / "interrupted"
    process = _start_train(prepared_data, interrupted, "--epochs", "3")
    _wait_for(lambda: (interrupted / "checkpoints" / "checkpoint-000000006.pt").exists(), 240, "a checkpoint")
    os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up: like a node loss
    process.wait()
    before = _steps(interrupted)
    assert max(before) < max(reference), "the run finished before it could be interrupted"

    done = run_lanex("train", "--data-root", str(prepared_data), "--output-dir", str(interrupted), "--epochs", "3",
                     "--checkpoint-every", "2", "--no-val", *TINY)
    assert "resuming from" in done.stderr
    resumed = _steps(interrupted)
    assert sorted(resumed) == sorted(reference)
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5), f"step {step}"
    assert json.loads((interrupted / "results.json").read_text())["steps"] == max(reference)
