"""Preemption loses no work: SIGTERM/SIGINT end a run after its current step, checkpointed, and the
next start resumes at that step on the uninterrupted run's loss trajectory (real processes, CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lanex_trainer.checkpoint import load_checkpoint
from lanex_trainer.distributed import Distributed, WorldInfo
from lanex_trainer.preemption import (PREEMPTED_EXIT_CODE, PreemptionRecord, StopRequest, preempted_exit_code,
                                      read_record, write_record)
from trainer_helpers import LANEX, VENV_BIN, run_lanex

# 24 clips: 21 training images; at a batch of 2 per rank, 6 steps per epoch with 2 ranks.
TINY = ["--backbone", "small", "--height", "64", "--width", "160", "--batch-size", "2", "--loader-workers", "1",
        "--val-batch-size", "8", "--lr", "0.02", "--warmup-iterations", "2", "--checkpoint-every", "100"]
EPOCHS = ["--epochs", "6"]


def _losses(output: Path) -> dict[int, float]:
    """step -> loss from train_log.jsonl (a resumed run's newer line for a step wins)."""
    losses = {}
    for line in (output / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}


def _launch(data: Path, out: Path, port: int) -> list[str]:
    return [LANEX, "launch", "--processes", "2", "--master-port", str(port), "--",
            "lanex", "train", "--data-root", str(data), "--output-dir", str(out), *EPOCHS, *TINY]


def _signal_after_step(argv: list[str], out: Path, step: int, signum: int) -> subprocess.CompletedProcess:
    """Start `argv`, send `signum` once train_log.jsonl has `step` steps, wait for it to end."""
    process = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        log = out / "train_log.jsonl"
        deadline = time.monotonic() + 240
        while not (log.is_file() and len(log.read_text().splitlines()) >= step):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no training step in time"
            time.sleep(0.02)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(prepared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    done = subprocess.run(_launch(prepared_data, out, 29731), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sigterm_to_a_two_rank_launch_checkpoints_the_current_step_and_the_rerun_follows_the_same_losses(
        prepared_data, uninterrupted, tmp_path):
    reference = _losses(uninterrupted)
    out = tmp_path / "out"
    stopped = _signal_after_step(_launch(prepared_data, out, 29732), out, 8, signal.SIGTERM)

    assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
    record = read_record(out)
    assert record is not None and record.signal == "SIGTERM"
    before = _losses(out)
    # Not one completed step lost: the checkpoint is of the last step any rank logged.
    assert record.step == max(before) < max(reference)
    assert f"lanex launch: preempted by SIGTERM: stopped after step {record.step} of 36" in stopped.stderr
    assert "Traceback" not in stopped.stderr  # torchrun saw ranks that left cleanly
    state = load_checkpoint(Path(record.checkpoint))
    assert Path(record.checkpoint).name == f"checkpoint-{record.step:09d}.pt"
    assert state["step"] == record.step and state["run_id"] == record.run_id
    assert (state["epoch"], state["batch_in_epoch"]) == divmod(record.step, 6)  # mid-epoch: the sampler's place
    assert {"model", "optimizer", "scheduler", "rng", "epoch_totals"} <= set(state)

    resumed = subprocess.run(_launch(prepared_data, out, 29733), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint-{record.step:09d}.pt at step {record.step} " in resumed.stderr
    assert f"was preempted by SIGTERM there" in resumed.stderr and read_record(out) is None
    after = _losses(out)
    assert sorted(after) == sorted(reference)
    for step, loss in reference.items():
        assert after[step] == pytest.approx(loss, rel=1e-6), f"step {step}"
    history = json.loads((out / "results.json").read_text())["history"]
    expected = json.loads((uninterrupted / "results.json").read_text())["history"]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in expected], rel=1e-6)
    assert [h["val_loss"] for h in history] == pytest.approx([h["val_loss"] for h in expected], rel=1e-6)


@pytest.mark.slow
def test_ctrl_c_to_lanex_train_alone_stops_after_the_step_and_exits_75_saying_preempted(prepared_data, tmp_path):
    out = tmp_path / "out"
    argv = [LANEX, "train", "--data-root", str(prepared_data), "--output-dir", str(out), *EPOCHS, *TINY]
    stopped = _signal_after_step(argv, out, 2, signal.SIGINT)
    assert stopped.returncode == PREEMPTED_EXIT_CODE
    record = read_record(out)
    assert record.step == max(_losses(out))
    assert stopped.stderr.strip().splitlines()[-1] == f"lanex train: {record.message()}"
    assert "KeyboardInterrupt" not in stopped.stderr
    assert json.loads((out / "progress.json").read_text())["state"] == "preempted"


class _Peers(Distributed):
    """Two ranks as one process sees them: the other rank's stop flag is added in the all-reduce."""

    def __init__(self, peer_flag: float):
        super().__init__(WorldInfo(rank=0, world_size=2, local_rank=0, launcher="test"))
        self.peer_flag = peer_flag

    def all_reduce_sum(self, tensor):
        return tensor.add_(self.peer_flag)


def test_a_signal_to_one_rank_stops_every_rank_and_only_the_first_signal_counts():
    # What the session inherited (a shell's background job ignores SIGINT): restore() must put it back.
    inherited = signal.getsignal(signal.SIGINT)
    stop = StopRequest().install()
    try:
        assert not stop.agreed(_Peers(0.0))
        assert stop.agreed(_Peers(1.0)) and stop.signal == "a peer's stop signal"
    finally:
        stop.restore()
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: noted, and the first one stays
        assert stop.signal == "SIGTERM" and stop.agreed(_Peers(0.0))
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is inherited


def test_preemption_record_round_trips_and_names_the_run(tmp_path):
    record = PreemptionRecord(run_id="r1", signal="SIGTERM", step=12, steps=40, epoch=2,
                              checkpoint="c.pt", seconds_to_checkpoint=0.25)
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record == read_record(tmp_path, "r1")
    assert read_record(tmp_path, "another run") is None
    (tmp_path / "preempted.json").write_text("{")
    assert read_record(tmp_path) is None
    assert preempted_exit_code({}) == 75 and preempted_exit_code({"LANEX_PREEMPTED_EXIT_CODE": "0"}) == 0
