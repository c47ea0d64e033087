"""One writer per output directory: the lease, its takeover rules and fencing, on real files and processes."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lanex_trainer import train as train_module
from lanex_trainer.checkpoint import load_checkpoint
from lanex_trainer.config import build_config
from lanex_trainer.distributed import Distributed, WorldInfo
from lanex_trainer.lease import LEASE_FILE, Fenced, Lease, LeaseBusy, LeaseUnreadable, OutputOwnership, new_run_id
from trainer_helpers import LANEX, VENV_BIN

TINY = ["--backbone", "small", "--height", "64", "--width", "160", "--batch-size", "4", "--loader-workers", "0"]


class _Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lease(directory: Path, run_id: str, job=None, clock=None, host="node-a", pid=None, stale=120.0) -> Lease:
    return Lease(directory, run_id, job, stale, clock=clock or _Clock(), host=host,
                 pid=os.getpid() if pid is None else pid)


class _OtherRank(Distributed):
    """Rank 1 of a two-rank job: its broadcasts return what rank 0 sent (scripted here)."""

    def __init__(self, from_rank0: list):
        super().__init__(WorldInfo(rank=1, world_size=2, local_rank=1, launcher="torchrun"))
        self.from_rank0 = from_rank0

    def broadcast_object(self, obj):
        return self.from_rank0.pop(0)  # what rank 1 offers is ignored, as in a real broadcast


def test_a_second_training_on_a_busy_directory_is_refused_naming_the_owner(tmp_path):
    first = _lease(tmp_path, "20260101T000000000000Z-aaaaaa", host="node-a")
    first.acquire()
    second = _lease(tmp_path, "20260101T000001000000Z-bbbbbb", host="node-b")
    with pytest.raises(LeaseBusy) as refused:
        second.acquire()
    message = str(refused.value)
    assert f"output_dir {tmp_path} is in use by run 20260101T000000000000Z-aaaaaa (host node-a, pid {os.getpid()})" in message
    assert "lease_stale_s" in message
    assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == first.run_id  # untouched


def test_a_stale_lease_is_taken_over_and_its_old_owner_is_fenced(tmp_path):
    clock = _Clock()
    old = _lease(tmp_path, "20260101T000000000000Z-aaaaaa", host="node-a", clock=clock)
    old.acquire()
    clock.now += 121  # no renewal for longer than lease_stale_s (120)
    new = _lease(tmp_path, "20260101T000500000000Z-bbbbbb", host="node-b", clock=clock)
    taken = new.acquire()
    assert taken is not None and taken.run_id == old.run_id
    assert old.lost_to().startswith("run 20260101T000500000000Z-bbbbbb (host node-b")
    assert old.renew() is not None  # the old owner's heartbeat does not win the lease back
    assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == new.run_id
    old.release()  # a fenced run's release leaves the new owner's lease alone
    assert (tmp_path / LEASE_FILE).is_file()


def test_a_lease_whose_owner_process_on_this_host_is_gone_is_taken_over_at_once(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    _lease(tmp_path, "20260101T000000000000Z-aaaaaa", host="node-a", pid=gone.pid).acquire()
    assert _lease(tmp_path, "20260101T000001000000Z-bbbbbb", host="node-a").acquire().pid == gone.pid


@pytest.mark.parametrize("content, what", [
    ("{\"run_id\": \"20260101T000000000000Z-aaaaaa\", \"host\"", "Expecting"),  # cut short
    ("[1, 2]", "a JSON list, not an object"),
    ("{\"run_id\": \"r\", \"host\": \"h\", \"heartbeat\": 1.0}", "no 'pid'"),
])
def test_an_unreadable_lease_is_never_taken_over_and_is_left_as_it_is(tmp_path, content, what):
    (tmp_path / LEASE_FILE).write_text(content)
    with pytest.raises(LeaseUnreadable) as refused:
        _lease(tmp_path, new_run_id()).acquire()
    message = str(refused.value)
    assert message.startswith(f"output_dir {tmp_path}: its lease {tmp_path / LEASE_FILE} is unreadable (")
    assert what in message and "\n" not in message
    assert (tmp_path / LEASE_FILE).read_text() == content


def test_a_lease_written_in_another_pid_namespace_waits_for_its_heartbeat_even_when_its_pid_is_free_here(tmp_path):
    # A pod recreated under the same hostname: the old owner's pid means nothing in the new pid namespace.
    clock = _Clock()
    gone = subprocess.Popen(["true"])
    gone.wait()
    old = _lease(tmp_path, "20260101T000000000000Z-aaaaaa", host="lanes-launcher", pid=gone.pid, clock=clock)
    old.acquire()
    record = json.loads((tmp_path / LEASE_FILE).read_text())
    assert record["boot_id"] and record["pid_namespace"]
    (tmp_path / LEASE_FILE).write_text(json.dumps({**record, "pid_namespace": record["pid_namespace"] + 1}))
    newcomer = _lease(tmp_path, "20260101T000001000000Z-bbbbbb", host="lanes-launcher", clock=clock)
    with pytest.raises(LeaseBusy):
        newcomer.acquire()
    clock.now += 121  # the heartbeat goes stale: now it may
    assert newcomer.acquire().run_id == old.run_id


def test_a_lease_whose_pid_now_names_a_later_process_is_taken_over(tmp_path):
    old = _lease(tmp_path, "20260101T000000000000Z-aaaaaa", host="node-a", pid=os.getpid())
    old.acquire()
    record = json.loads((tmp_path / LEASE_FILE).read_text())
    assert record["pid_start"] is not None
    (tmp_path / LEASE_FILE).write_text(json.dumps({**record, "pid_start": record["pid_start"] - 1}))  # pid reused
    assert _lease(tmp_path, "20260101T000001000000Z-bbbbbb", host="node-a").acquire().run_id == old.run_id


def test_a_restarted_launcher_takes_over_from_an_earlier_attempt_of_the_same_job_and_not_the_reverse(tmp_path):
    earlier = _lease(tmp_path, new_run_id(), job="team/lanes", host="lanes-worker-0", pid=os.getpid())
    earlier.acquire()
    time.sleep(0.001)
    restarted = _lease(tmp_path, new_run_id(), job="team/lanes", host="lanes-worker-0", pid=os.getpid())
    restarted.acquire()  # fresh heartbeat, live process: taken by run-id order within the job
    assert earlier.lost_to() is not None
    with pytest.raises(LeaseBusy, match="of job team/lanes"):
        earlier.acquire()  # the older attempt never takes it back
    with pytest.raises(LeaseBusy):
        _lease(tmp_path, new_run_id(), job="team/other", host="lanes-worker-0").acquire()  # another job: refused


def test_every_rank_stops_at_the_same_fencing_point_when_rank_0_lost_the_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("LANEX_RUN_ID", "20260101T000000000000Z-aaaaaa")
    rank0 = OutputOwnership(tmp_path, Distributed(WorldInfo(0, 1, 0, "single")), stale_after_s=120, heartbeat_s=3600)
    rank0.acquire()
    rank0.check()  # still the owner
    _lease(tmp_path, "20260101T000001000000Z-bbbbbb", host="elsewhere", clock=time.time, stale=0).acquire()  # taken over
    with pytest.raises(Fenced, match="no longer owns output_dir .* owned by run 20260101T000001000000Z-bbbbbb"):
        rank0.check()
    rank1 = OutputOwnership(tmp_path, _OtherRank(["20260101T000000000000Z-aaaaaa", None, "run X (host h, pid 1)"]),
                            stale_after_s=120, heartbeat_s=3600)
    assert rank1.run_id == rank0.run_id
    rank1.acquire()
    with pytest.raises(Fenced, match="owned by run X"):
        rank1.check()  # rank 1 never reads the file: it follows rank 0's verdict
    rank0.release()
    rank1.release()


def test_a_trainer_whose_lease_is_taken_stops_before_its_next_checkpoint(prepared_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("LANEX_RUN_ID", "20260101T000000000000Z-aaaaaa")
    cfg = build_config(environ={}, overrides={
        "data_root": prepared_data, "output_dir": out, "backbone": "small", "height": 64, "width": 160,
        "batch_size": 4, "loader_workers": 0, "validation": False, "checkpoint_every": 1, "max_iterations": 6,
        "lease_heartbeat_s": 3600, "lease_stale_s": 36000})
    saved = []
    real_save = train_module.save_checkpoint

    def save_then_lose_the_lease(state, directory, step, keep):
        path = real_save(state, directory, step, keep)
        saved.append(step)
        if len(saved) == 2:  # another training takes output_dir over between two checkpoints
            _lease(out, "20260101T000009000000Z-bbbbbb", host="intruder", clock=time.time, stale=0).acquire()
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_lose_the_lease)
    with pytest.raises(Fenced, match="owned by run 20260101T000009000000Z-bbbbbb"):
        train_module.run_training(cfg)
    assert saved == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*.pt")) == [
        "checkpoint-000000001.pt", "checkpoint-000000002.pt"]
    assert not (out / "final.pt").exists() and not (out / "results.json").exists()
    checkpoint = load_checkpoint(out / "checkpoints" / "checkpoint-000000002.pt")
    assert checkpoint["run_id"] == "20260101T000000000000Z-aaaaaa"
    assert json.loads((out / LEASE_FILE).read_text())["host"] == "intruder"  # the new owner keeps its lease


@pytest.mark.slow
def test_a_second_lanex_train_on_a_busy_output_directory_refuses_with_the_owner(prepared_data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    for name in ("LANEX_RUN_ID", "LANEX_JOB"):
        env.pop(name, None)
    argv = [LANEX, "train", "--data-root", str(prepared_data), "--output-dir", str(out), "--no-val", *TINY]
    first = subprocess.Popen([*argv, "--epochs", "200"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / LEASE_FILE).is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first training never took its lease"
            time.sleep(0.1)
        second = subprocess.run([*argv, "--epochs", "1"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"output_dir {out} is in use by run " in second.stderr
        assert f"pid {first.pid})" in second.stderr
        assert first.poll() is None  # the owner trains on, undisturbed
    finally:
        first.kill()
        first.wait()


def test_lanex_train_on_a_directory_with_a_corrupt_lease_refuses_in_one_line_and_leaves_it(prepared_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_FILE).write_text("{not json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    done = subprocess.run([LANEX, "train", "--data-root", str(prepared_data), "--output-dir", str(out), "--no-val",
                           "--epochs", "1", *TINY], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"its lease {out / LEASE_FILE} is unreadable" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert (out / LEASE_FILE).read_text() == "{not json"
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_restarted_launchers_run_takes_over_and_the_earlier_attempts_ranks_are_fenced(prepared_data, tmp_path):
    # As on the cluster: the launcher restarted while a rank of its previous attempt still trains.
    out = tmp_path / "out"
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "LANEX_JOB": "team/lanes"}
    argv = [LANEX, "train", "--data-root", str(prepared_data), "--output-dir", str(out), "--no-val",
            "--checkpoint-every", "1", *TINY]
    earlier_id, restarted_id = new_run_id(), None
    earlier = subprocess.Popen([*argv, "--epochs", "200"], env={**base, "LANEX_RUN_ID": earlier_id},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("checkpoint-*.pt")):
            assert earlier.poll() is None and time.monotonic() < deadline, "the earlier attempt never checkpointed"
            time.sleep(0.1)
        restarted_id = new_run_id()
        restarted = subprocess.run([*argv, "--epochs", "1"], env={**base, "LANEX_RUN_ID": restarted_id},
                                   capture_output=True, text=True, timeout=300)
        assert restarted.returncode == 0, restarted.stderr
        assert f"taking over the lease of run {earlier_id} of job team/lanes" in restarted.stderr
        assert "it is an earlier attempt of job team/lanes" in restarted.stderr
        _, errors = earlier.communicate(timeout=120)
    finally:
        if earlier.poll() is None:
            earlier.kill()
            earlier.wait()
    assert earlier.returncode == 1
    assert f"run {earlier_id} no longer owns output_dir {out}: it is owned by run {restarted_id}" in errors
    assert json.loads((out / "results.json").read_text())["run_id"] == restarted_id
    assert load_checkpoint(out / "final.pt")["run_id"] == restarted_id
