"""Distributed training with real launchers and processes (CPU, gloo).

Two ranks with half the batch each must stay bit-identical to each other after every step and
follow the single-process loss trajectory. The probe freezes BatchNorm and drops dropout (per-rank
batch statistics and masks would legitimately differ); the tolerance is not zero because SCNN's
class-weighted cross-entropy is normalised by each rank's own weight sum before averaging;
measured within 1% over the first steps, which is the stated tolerance.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer_helpers import VENV_BIN, run_lanex

PROBE = Path(__file__).with_name("dist_probe.py")
STEPS, GLOBAL_BATCH = 4, 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
       "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "self,tcp"}


def _probe(launcher_argv: list[str], data: Path, out: Path, backend: str, sync_bn: bool) -> list[dict]:
    argv = [*launcher_argv, sys.executable, str(PROBE), str(data), str(out), str(GLOBAL_BATCH), str(STEPS), backend,
            "1" if sync_bn else "0"]
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


@pytest.fixture(scope="module")
def single_process(prepared_data, tmp_path_factory):
    return _probe([], prepared_data, tmp_path_factory.mktemp("single"), "torch", False)[0]


def _assert_matches_single(ranks: list[dict], single: dict, rel: float) -> None:
    assert len(ranks) == 2 and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["digests"] == ranks[1]["digests"], "parameters diverged between ranks"
    assert len(ranks[0]["losses"]) == STEPS
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=rel)


@pytest.mark.slow
def test_torchrun_two_ranks_stay_identical_and_follow_single_process(prepared_data, single_process, tmp_path):
    launcher = ["torchrun", "--no-python", "--nnodes=1", "--nproc-per-node=2", "--master-port=29611"]
    ranks = _probe(launcher, prepared_data, tmp_path, "torch", sync_bn=False)
    assert {r["backend"] for r in ranks} == {"torch"}
    _assert_matches_single(ranks, single_process, rel=0.01)


@pytest.mark.slow
def test_mpirun_two_ranks_rendezvous_and_train_identically(prepared_data, single_process, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    launcher = ["mpirun", "-np", "2", "--hostfile", str(hostfile), "--bind-to", "none",
                "-x", "LANEX_MPI_HOSTFILE=" + str(hostfile), "-x", "MASTER_PORT=29612", "-x", "PATH", "-x", "OMP_NUM_THREADS"]
    ranks = _probe(launcher, prepared_data, tmp_path / "out", "torch", sync_bn=False)
    _assert_matches_single(ranks, single_process, rel=0.01)


@pytest.mark.slow
def test_horovodrun_two_ranks_train_identically(prepared_data, single_process, tmp_path):
    launcher = ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo"]
    ranks = _probe(launcher, prepared_data, tmp_path, "horovod", sync_bn=False)
    assert {r["backend"] for r in ranks} == {"horovod"}
    _assert_matches_single(ranks, single_process, rel=0.01)


EVAL_PROBE = Path(__file__).with_name("eval_probe.py")


@pytest.mark.slow
def test_distributed_evaluation_counts_every_image_once_and_equals_single_process(prepared_data, tmp_path):
    # A checkpoint to evaluate: two quick epochs of the small model.
    out = tmp_path / "run"
    run_lanex("train", "--data-root", str(prepared_data), "--output-dir", str(out), "--epochs", "1",
              "--backbone", "small", "--height", "64", "--width", "160", "--batch-size", "4", "--loader-workers", "0",
              "--no-val")
    single = tmp_path / "single.json"
    done = subprocess.run([sys.executable, str(EVAL_PROBE), str(prepared_data), str(out / "final.pt"), str(single)],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    shared = tmp_path / "two.json"
    done = subprocess.run(["torchrun", "--no-python", "--nnodes=1", "--nproc-per-node=2", "--master-port=29613",
                           sys.executable, str(EVAL_PROBE), str(prepared_data), str(out / "final.pt"), str(shared)],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(shared.read_text())
    for split in ("val", "test"):
        assert two[split]["images"] == one[split]["images"]  # 3 val and 5 test images: odd, nothing padded
        for key in ("accuracy", "fp", "fn"):
            assert two[split][key] == pytest.approx(one[split][key], abs=1e-9), (split, key)
        # float32 convolutions round differently with another batch composition: ~1e-7 relative.
        assert two[split]["loss"] == pytest.approx(one[split]["loss"], rel=1e-5)


def _rank_pids(output_dir: Path, rank: int) -> list[int]:
    """PIDs of `lanex train` processes of this output dir running as RANK=rank."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(output_dir).encode() in cmdline and b"train" in cmdline and f"RANK={rank}".encode() in environ:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_killed_rank_fails_the_job_quickly_and_a_relaunch_resumes_from_the_checkpoint(prepared_data, tmp_path):
    out = tmp_path / "out"
    train = ["lanex", "train", "--data-root", str(prepared_data), "--output-dir", str(out), "--backbone", "small",
             "--height", "64", "--width", "160", "--batch-size", "2", "--loader-workers", "0", "--no-val",
             "--checkpoint-every", "2", "--set", "collective_timeout_s=30"]
    launch = [str(VENV_BIN / "lanex"), "launch", "--backend", "torch", "--launcher", "torchrun", "--processes", "2",
              "--master-port", "29614", "--"]
    process = subprocess.Popen([*launch, *train, "--epochs", "40"], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    checkpoints = out / "checkpoints"
    deadline = time.monotonic() + 240
    while not (checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*.pt"))):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    victims = _rank_pids(out, 1)
    assert victims, "rank 1 not found"
    killed_at = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    try:
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert time.monotonic() - killed_at < 90
    assert "training failed: torchrun exited with code" in stderr

    resumed_from = max(int(p.stem.split("-")[1]) for p in checkpoints.glob("checkpoint-*.pt"))
    done = subprocess.run([*launch, *train, "--epochs", "40", "--max-iterations", str(resumed_from + 2)], env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {resumed_from} (epoch " in done.stderr  # "resuming from ... at step N (epoch E, ...)"
    assert json.loads((out / "results.json").read_text())["steps"] == resumed_from + 2
    # Rank 0 writes every rank's test predictions, once each.
    predicted = [json.loads(line)["raw_file"] for line in (out / "test_predictions.json").read_text().splitlines()]
    expected = [json.loads(line)["raw_file"] for line in (prepared_data / "test_label.json").read_text().splitlines()]
    assert sorted(predicted) == sorted(expected)


@pytest.mark.slow
def test_lanex_launch_with_horovod_trains_from_tr4896_environment(prepared_data, tmp_path):
    """TR-4896's job shape: horovodrun over 2 processes, configured by its environment variables."""
    out = tmp_path / "out"
    env = {**ENV, "BATCH_SIZE": "2", "USE_VAL": "false", "USE_WORKERS": "false", "NUM_WORKERS": "0",
           "VAL_BATCH_SIZE": "4", "ENABLE_SNAPSHOT": "true", "PVC_NAME": "lane-data"}
    done = subprocess.run(
        [str(VENV_BIN / "lanex"), "launch", "--backend", "horovod", "--processes", "2", "--termination-log",
         str(tmp_path / "termination-log"), "--", "lanex", "train", "--data-root", str(prepared_data),
         "--output-dir", str(out), "--backbone", "small", "--height", "64", "--width", "160", "--epochs", "1"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "horovodrun -np 2 -H localhost:2" in done.stderr
    effective = next(line for line in done.stderr.splitlines() if "effective training config" in line)
    assert "world size 2, backend horovod" in effective
    for fragment in ('"batch_size":2', '"validation":false', '"use_workers":false', '"loader_workers":0',
                     '"val_batch_size":4', '"enable_snapshot":true', '"pvc_name":"lane-data"'):
        assert fragment in effective
    results = json.loads((out / "results.json").read_text())
    assert (results["world_size"], results["backend"]) == (2, "horovod")
    assert results["test"]["images"] == 5
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["accuracy"] == results["accuracy"] and message["checkpoint"] == results["checkpoint"]
