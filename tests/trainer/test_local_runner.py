"""`lanex run`: one LaneExperiment on this machine, through the same plan as the cluster."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from trainer_helpers import LANEX, VENV_BIN, run_lanex

ROOT = Path(__file__).resolve().parents[2]


def _experiment(tmp_path: Path, name: str, **training) -> Path:
    document = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    document["metadata"]["name"] = name
    document["spec"]["dataset"]["synthetic"] = {"clips": 16, "seed": 3, "testClips": 4}
    document["spec"]["training"].update({"epochs": 1, "height": 64, "width": 160, "batchSize": 2,
                                         "validation": {"enabled": False, "batchSize": 4}, **training})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("local")
    experiment = _experiment(tmp_path, "tiny")
    done = run_lanex("run", str(experiment), "--workspace", str(tmp_path / "ws"), timeout=600)
    return tmp_path, experiment, done


def test_local_run_succeeds_with_results_snapshot_and_summary(finished):
    tmp_path, _, done = finished
    workspace = tmp_path / "ws"
    state = json.loads((workspace / "experiments" / "tiny" / "state.json").read_text())
    assert state["phase"] == "Succeeded"
    assert [s for s in state["steps"]] == ["dataset", "prepare", "share", "train", "snapshot"]
    output = workspace / "volumes" / "tiny-data" / "experiments" / "tiny"
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2 and results["backend"] == "torch"
    assert state["results"]["accuracy"] == results["accuracy"]
    snapshot = state["snapshots"][-1]
    assert snapshot.startswith("tiny-")
    manifest = json.loads((workspace / "snapshots" / snapshot / "manifest.json").read_text())
    assert "experiments/tiny/results.json" in manifest["files"]
    assert "tusimple_data/lanex_index/prepared.json" in manifest["files"]
    assert "Succeeded" in done.stdout and snapshot in done.stdout and str(output / "curves.png") in done.stdout
    assert f"worst:      {output / 'worst.png'}" in done.stdout and (output / "worst.png").is_file()
    assert "LANEX_PROGRESS" not in done.stdout + done.stderr  # on the terminal: the bar, not the JSON lines
    assert "LANEX_PROGRESS {" in (workspace / "experiments" / "tiny" / "logs" / "train.log").read_text()


def test_running_a_finished_experiment_again_redoes_nothing(finished):
    tmp_path, experiment, _ = finished
    done = run_lanex("run", str(experiment), "--workspace", str(tmp_path / "ws"))
    assert done.stderr.count("already done, skipping") == 5
    snapshots = run_lanex("snapshots", "list", "--workspace", str(tmp_path / "ws")).stdout.splitlines()
    assert len(snapshots) == 1


def test_restore_from_a_local_snapshot_trains_without_preparing(finished):
    tmp_path, _, _ = finished
    workspace = tmp_path / "ws"
    snapshot = json.loads((workspace / "experiments" / "tiny" / "state.json").read_text())["snapshots"][-1]
    document = yaml.safe_load(_experiment(tmp_path, "restored").read_text())
    document["spec"]["dataset"] = {"fromSnapshot": {"snapshotName": snapshot}}
    path = tmp_path / "restored.yaml"
    path.write_text(yaml.safe_dump(document))
    run_lanex("run", str(path), "--workspace", str(workspace), timeout=600)
    state = json.loads((workspace / "experiments" / "restored" / "state.json").read_text())
    assert state["phase"] == "Succeeded" and "prepare" not in state["steps"]
    assert state["steps"]["dataset"]["restoredFrom"] == snapshot


def test_invalid_experiment_names_the_field_and_exits_2(tmp_path):
    document = yaml.safe_load(_experiment(tmp_path, "bad").read_text())
    document["spec"]["training"]["workers"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    done = run_lanex("run", str(path), "--workspace", str(tmp_path / "ws"), check=False)
    assert done.returncode == 2 and "spec.training.workers" in done.stderr


def _alive(processes: list) -> list:
    """Those of `processes` still running 10 s later (zombies awaiting their reaper are gone)."""
    _, alive = psutil.wait_procs(processes, timeout=10)
    still = []
    for process in alive:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                still.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            pass
    return still


def _processes_naming(path: Path) -> list:
    """Every live process whose command line names `path` (the experiment's workspace)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if str(path) in " ".join(process.info["cmdline"] or []) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.slow
def test_sigkilled_run_leaves_no_process_and_its_rerun_resumes_from_the_checkpoint(tmp_path):
    # One DataLoader worker per rank: the whole tree, loader workers included, must end with the runner.
    experiment = _experiment(tmp_path, "interrupted", epochs=6, batchSize=2, loaderWorkers=1, useWorkers=True)
    workspace = tmp_path / "ws"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    process = subprocess.Popen([LANEX, "run", str(experiment), "--workspace", str(workspace)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        checkpoints = workspace / "volumes" / "interrupted-data" / "experiments" / "interrupted" / "checkpoints"
        deadline = time.monotonic() + 300
        while not (checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*.pt"))):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)

        second = run_lanex("run", str(experiment), "--workspace", str(workspace), check=False)
        assert second.returncode == 2
        assert f"experiment interrupted is already being run by lanex run (pid {process.pid} " in second.stderr

        tree = psutil.Process(process.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in tree]
        assert any("torchrun" in c for c in commands) and sum(" train " in c for c in commands) >= 4, commands
    finally:
        os.kill(process.pid, signal.SIGKILL)  # `lanex run` alone, like the OOM killer: no clean-up at all
        process.wait()
    assert _alive(tree) == []  # launch, torchrun, both ranks and their loader workers ended with it
    assert _alive(_processes_naming(workspace)) == []
    state = json.loads((workspace / "experiments" / "interrupted" / "state.json").read_text())
    assert state["steps"]["prepare"]["state"] == "Done" and state["steps"]["train"]["state"] == "Running"
    killed = json.loads(run_lanex("get", "--workspace", str(workspace), "-o", "json").stdout)["experiments"][0]
    assert (killed["phase"], killed["running"]) == ("Training", False)
    assert "Training (stopped)" in run_lanex("get", "--workspace", str(workspace)).stdout

    done = run_lanex("run", str(experiment), "--workspace", str(workspace), timeout=600)
    assert "prepare: already done, skipping" in done.stderr
    assert "resuming from" in done.stdout  # the trainer's log, streamed through the runner
    assert "taking over the lease of run " in done.stdout
    state = json.loads((workspace / "experiments" / "interrupted" / "state.json").read_text())
    assert state["phase"] == "Succeeded"


@pytest.mark.slow
def test_ctrl_c_stops_training_after_a_checkpointed_step_and_the_rerun_resumes_there(tmp_path):
    experiment = _experiment(tmp_path, "ctrlc", epochs=8, loaderWorkers=1, useWorkers=True)
    workspace = tmp_path / "ws"
    output = workspace / "volumes" / "ctrlc-data" / "experiments" / "ctrlc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    process = subprocess.Popen([LANEX, "run", str(experiment), "--workspace", str(workspace)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        log = output / "train_log.jsonl"
        deadline = time.monotonic() + 300
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        tree = psutil.Process(process.pid).children(recursive=True)
        os.kill(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to `lanex run` alone
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    last = steps[-1]
    assert (output / "checkpoints" / f"checkpoint-{last:09d}.pt").is_file()  # the step it stopped after
    total = json.loads((output / "progress.json").read_text())["steps"]
    assert f"interrupted: training stopped after step {last} of {total} and checkpointed it; run it again to resume " \
           f"at step {last} (`lanex run {experiment}`)" in stderr
    assert "Traceback" not in stderr
    assert _alive(tree) == []  # it waited for launch, torchrun, the ranks and their loader workers
    state = json.loads((workspace / "experiments" / "ctrlc" / "state.json").read_text())
    assert state["phase"] == "Failed" and state["message"].startswith(f"interrupted: training stopped after step {last}")

    done = run_lanex("run", str(experiment), "--workspace", str(workspace), timeout=600)
    assert f"checkpoint-{last:09d}.pt at step {last} " in done.stdout  # the trainer's log, through the runner
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # every step once: none lost, none repeated
    assert json.loads((workspace / "experiments" / "ctrlc" / "state.json").read_text())["phase"] == "Succeeded"


def _json_documents(text: str) -> list[dict]:
    """The JSON objects `lanex get -w -o json` printed one after another."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def test_lanex_get_workspace_from_another_process_follows_the_step_of_a_running_experiment(tmp_path):
    experiment = _experiment(tmp_path, "watched", epochs=5, height=144, width=400,
                             validation={"enabled": True, "batchSize": 4})
    workspace = tmp_path / "ws"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    # The watcher starts before the run exists and ends by itself once the experiment has Succeeded.
    watcher = subprocess.Popen([LANEX, "get", "--workspace", str(workspace), "-w", "-o", "json"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_lanex("run", str(experiment), "--workspace", str(workspace), env={"LANEX_PROGRESS_INTERVAL": "0.2"},
                  timeout=600)
        watched, errors = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, errors
    documents = _json_documents(watched)
    assert all(d["running"] for d in documents if d["phase"] not in ("Succeeded", "Failed"))
    training = [d["progress"] for d in documents if d["phase"] == "Training" and d["progress"]]
    steps = [p["step"] for p in training]
    assert steps == sorted(steps) and len(set(steps)) >= 2, steps  # seen moving while it trained
    assert any(p["state"] == "training" and 0 < p["step"] < p["steps"] for p in training)
    assert documents[-1]["phase"] == "Succeeded"

    state = json.loads((workspace / "experiments" / "watched" / "state.json").read_text())
    listed = json.loads(run_lanex("get", "--workspace", str(workspace), "-o", "json").stdout)
    assert listed["sweeps"] == [] and [e["name"] for e in listed["experiments"]] == ["watched"]
    shown = listed["experiments"][0]
    assert shown["phase"] == "Succeeded" and shown["running"] is False and shown["snapshot"] == state["snapshots"][-1]
    assert shown["results"] == {k: state["results"][k] for k in ("accuracy", "fp", "fn")}
    output = Path(state["outputDir"])
    results = json.loads((output / "results.json").read_text())
    progress = shown["progress"]
    assert progress == json.loads((output / "progress.json").read_text())
    assert (progress["state"], progress["epoch"], progress["epochs"]) == ("finished", 5, 5)
    assert progress["runId"] == results["run_id"]  # the run that held the output directory's lease
    assert progress["step"] == progress["steps"] == results["steps"]
    assert [v["accuracy"] for v in progress["validationHistory"]] == [
        r["val_accuracy"] for r in results["history"] if "val_accuracy" in r]
    assert progress["imagesPerSecond"] > 0  # two ranks' images over rank 0's wall time

    table = run_lanex("get", "--workspace", str(workspace)).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "IMG/S", "ETA", "VAL", "ACC", "ACCURACY",
                                "SNAPSHOT"]
    assert table[1].split()[:4] == ["watched", "Succeeded", "5/5", "100%"]
    missing = run_lanex("get", "nothing", "--workspace", str(workspace), check=False)
    assert missing.returncode == 1 and "no local experiment nothing" in missing.stderr
