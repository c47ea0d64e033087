"""`lanex train` logging to a REAL `mlflow server` (SQLite store, local artifacts) on 127.0.0.1.

What is checked goes through MLflow's own client: the parameters, every metric history against the
run's own records (train_log.jsonl per step, results.json per epoch and for the test), the artifacts,
the tags; a preempted run that resumes continues the same MLflow run; and a server that is down at the
start or dies in the middle costs training nothing: it succeeds in about the time of an untracked run,
says so once, keeps the records, and they reach the server once it is back on the same port.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import MlflowServerProcess, free_port
from trainer_helpers import LANEX, VENV_BIN, run_lanex

from lanex_trainer.config import MlflowConfig
from lanex_trainer.preemption import PREEMPTED_EXIT_CODE
from lanex_trainer.tracking import RunTracker, run_link
from lanex_trainer.tracking.server import MlflowServer
from lanex_trainer.tracking.sweep import start_sweep_run

TINY = ["--backbone", "small", "--height", "64", "--width", "160", "--batch-size", "4", "--loader-workers", "0",
        "--val-batch-size", "8", "--lr", "0.02", "--warmup-iterations", "2", "--progress-interval", "0.5"]
NO_ANSWER = "no answer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = MlflowServerProcess(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield process
    finally:
        process.stop()


def tracking(uri: str, experiment: str, **extra) -> dict[str, str]:
    settings = {"tracking_uri": uri, "experiment_name": experiment, "run_name": "exp-a",
                "tags": {"lanex.experiment": "local/exp-a", "lanex.image": "ghcr.io/lanex/trainer:test"}, **extra}
    return {"LANEX_MLFLOW": json.dumps(settings)}


def train(data: Path, out: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = run_lanex("train", "--data-root", str(data), "--output-dir", str(out), *TINY, *extra, env=env)
    return done, time.monotonic() - started


def step_log(out: Path) -> dict[int, dict]:
    records = {}
    for line in (out / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record
    return records


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def assert_complete(client: MlflowClient, out: Path) -> str:
    """The run of `out` holds exactly what the run recorded locally; returns its id."""
    run_id = json.loads((out / "mlflow" / "run.json").read_text())["runId"]
    steps = step_log(out)
    results = json.loads((out / "results.json").read_text())
    assert history(client, run_id, "loss") == [(step, pytest.approx(r["loss"])) for step, r in sorted(steps.items())]
    assert history(client, run_id, "learning_rate") == [(step, pytest.approx(r["lr"])) for step, r in sorted(steps.items())]
    for key in ("train_loss", "val_accuracy", "val_fp", "val_fn", "val_loss"):
        assert history(client, run_id, key) == [(r["step"], pytest.approx(r[key])) for r in results["history"]], key
    assert history(client, run_id, "epoch_images_per_second") == [
        (r["step"], pytest.approx(r["images_per_second"])) for r in results["history"]]
    for key in ("accuracy", "fp", "fn", "loss"):
        assert history(client, run_id, f"test_{key}") == [(results["steps"], pytest.approx(results["test"][key]))]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert {"results.json", "curves.png", "worst.png", "overlays"} <= artifacts
    overlays = {Path(item.path).name for item in client.list_artifacts(run_id, "overlays")}
    assert overlays == {path.name for path in (out / "overlays").glob("*.png")} and overlays
    return run_id


@pytest.mark.slow
def test_a_tracked_run_logs_params_metric_histories_artifacts_and_tags_equal_to_its_own_records(
        server, prepared_data, tmp_path):
    out = tmp_path / "out"
    done, _ = train(prepared_data, out, tracking(server.uri, "lanes", log_best_checkpoint=True), "--epochs", "2")
    client = MlflowClient(server.uri)
    run_id = assert_complete(client, out)
    run = client.get_run(run_id)
    config = json.loads(done.stderr.split("effective training config", 1)[1].split(": ", 1)[1].splitlines()[0])
    assert run.data.params["batch_size"] == "4" and run.data.params["backbone"] == "small"
    assert {key: run.data.params[key] for key in config} == {
        key: "" if value is None else str(value) for key, value in config.items()}
    assert run.data.params["run.world_size"] == "1" and run.data.params["run.total_steps"] == "12"
    tags = run.data.tags
    assert tags["mlflow.runName"] == "exp-a" and tags["lanex.experiment"] == "local/exp-a"
    assert tags["lanex.image"] == "ghcr.io/lanex/trainer:test"
    assert tags["lanex.configHash"] == json.loads((out / "results.json").read_text())["config_hash"]
    assert {item.path for item in client.list_artifacts(run_id, "checkpoints")} == {"checkpoints/best.pt"}
    # images/s of the progress publications, at the steps where they were measured
    throughput = history(client, run_id, "images_per_second")
    assert throughput and all(value > 0 for _, value in throughput)
    assert set(step for step, _ in throughput) <= set(step_log(out))
    # the link the CLI and the UI show
    link = {"runId": run_id, "experimentId": run.info.experiment_id,
            "url": f"{server.uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}"}
    assert json.loads((out / "progress.json").read_text())["mlflow"] == link
    assert json.loads((out / "results.json").read_text())["mlflow"] == link == run_link(out)
    assert NO_ANSWER not in done.stderr


@pytest.mark.slow
def test_a_server_down_at_the_start_and_one_killed_mid_run_cost_training_nothing_and_lose_no_record(
        server, prepared_data, tmp_path):
    # the baseline: the same run without tracking
    _, untracked_s = train(prepared_data, tmp_path / "untracked", {}, "--epochs", "2")

    # 1. nothing listens at the start, nor later
    gone = MlflowServerProcess(tmp_path / "late-server", port=free_port())
    down = tmp_path / "down"
    done, down_s = train(prepared_data, down, tracking(gone.uri, "lanes-down"), "--epochs", "2")
    assert down_s < untracked_s * 1.5 + 5, (down_s, untracked_s)
    assert done.stderr.count(NO_ANSWER) == 1, done.stderr
    assert "record(s) not sent yet are kept in" in done.stderr
    assert json.loads((down / "progress.json").read_text())["mlflow"] is None
    replayed = run_lanex("mlflow", "replay", str(down), check=False)
    assert replayed.returncode == 1 and "still pending" in replayed.stderr

    # the server comes up on that port: the spooled records are replayed, the histories are complete
    gone.start()
    try:
        replayed = run_lanex("mlflow", "replay", str(down))
        assert json.loads(replayed.stdout)["sent"] is True
        assert_complete(MlflowClient(gone.uri), down)
    finally:
        gone.stop()

    # 2. the server dies once the run exists, and is back (same port, same store) after training ended
    dying = MlflowServerProcess(tmp_path / "dying-server").start()
    mid = tmp_path / "mid"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           **tracking(dying.uri, "lanes-mid")}
    process = subprocess.Popen([LANEX, "train", "--data-root", str(prepared_data), "--output-dir", str(mid), *TINY,
                                "--epochs", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        started = time.monotonic()
        cursor = mid / "mlflow" / "cursor.json"
        while not (cursor.is_file() and json.loads(cursor.read_text())["seq"] >= 3):  # params and steps went out
            assert process.poll() is None, process.communicate()
            assert time.monotonic() - started < 120, "the run never reached the server"
            time.sleep(0.05)
        dying.stop()
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, stderr
    assert stderr.count(NO_ANSWER) == 1, stderr
    assert len(step_log(mid)) == 24
    dying.start()
    try:
        assert json.loads(run_lanex("mlflow", "replay", str(mid)).stdout)["pending"] == 0
        assert_complete(MlflowClient(dying.uri), mid)
    finally:
        dying.stop()


@pytest.mark.slow
def test_a_preempted_run_resumes_into_the_same_mlflow_run_with_every_step_once(server, prepared_data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           **tracking(server.uri, "lanes-preempted")}
    argv = [LANEX, "train", "--data-root", str(prepared_data), "--output-dir", str(out), *TINY, "--epochs", "3"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        log = out / "train_log.jsonl"
        deadline = time.monotonic() + 240
        while not (log.is_file() and len(log.read_text().splitlines()) >= 8):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == PREEMPTED_EXIT_CODE
    first = json.loads((out / "mlflow" / "run.json").read_text())["runId"]
    client = MlflowClient(server.uri)
    stopped_at = max(step_log(out))
    assert client.get_run(first).info.status == "KILLED"
    assert client.get_run(first).data.tags["lanex.preemptedAtStep"] == str(stopped_at)

    done, _ = train(prepared_data, out, tracking(server.uri, "lanes-preempted"), "--epochs", "3")
    assert "resuming from" in done.stderr and f"continuing run {first}" in done.stderr
    assert assert_complete(client, out) == first
    steps = [metric.step for metric in client.get_metric_history(first, "loss")]
    assert steps == sorted(set(steps)) == list(range(1, 19))  # each step once: the checkpoint was of that step
    assert client.get_run(first).data.tags["lanex.resumedAtStep"] == str(stopped_at)
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1


def test_the_sender_catches_up_by_itself_when_the_server_comes_back_and_warns_once(tmp_path, caplog):
    server = MlflowServerProcess(tmp_path / "server").start()
    tracker = RunTracker(MlflowConfig(tracking_uri=server.uri, experiment_name="catch-up", run_name="r"), tmp_path / "out")
    tracker.sender.backoff_max_s = 2.0  # the outage's retries, at most 2 s apart (30 s in training)
    caplog.set_level(logging.INFO, logger="lanex_trainer.tracking")
    try:
        tracker.start({"lr": 0.1})
        for step in range(1, 6):
            tracker.metrics(step, {"loss": 1.0 / step})
        wait_until(lambda: tracker.journal.pending() == 0, 60, "the first records sent")
        server.stop()
        for step in range(6, 41):
            tracker.metrics(step, {"loss": 1.0 / step})
            time.sleep(0.02)
        wait_until(lambda: tracker.sender.outage is not None, 30, "the outage noticed")
        server.start()
        wait_until(lambda: tracker.journal.pending() == 0, 90, "the records kept during the outage sent")
        assert tracker.end("FINISHED", wait_s=30)
        client = MlflowClient(server.uri)
        run_id = tracker.link()["runId"]
        assert history(client, run_id, "loss") == [(step, pytest.approx(1.0 / step)) for step in range(1, 41)]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        if not tracker.ended:
            tracker.end("FAILED", wait_s=0)
        server.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and NO_ANSWER in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_trial_started_before_its_sweeps_parent_run_becomes_its_child_once_the_parent_exists(server, tmp_path):
    settings = MlflowConfig(tracking_uri=server.uri, experiment_name="late-parent", run_name="sweep-000",
                            sweep_uid="uid-123", tags={"lanex.sweepUid": "uid-123"})
    tracker = RunTracker(settings, tmp_path / "out")
    tracker.sender.parent_lookup_every_s = 0.2
    tracker.start({"lr": 0.1})
    try:
        wait_until(lambda: tracker.link() is not None, 60, "the trial's run")
        client = MlflowClient(server.uri)
        assert "mlflow.parentRunId" not in client.get_run(tracker.link()["runId"]).data.tags
        parent = start_sweep_run(MlflowServer(server.uri), "late-parent", "local/sweep", "uid-123", {"parallelism": 2})
        wait_until(lambda: client.get_run(tracker.link()["runId"]).data.tags.get("mlflow.parentRunId")
                   == parent["runId"], 30, "the parent found and set")
    finally:
        tracker.end("FINISHED", wait_s=30)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
