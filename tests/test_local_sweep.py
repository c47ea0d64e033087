"""`lanex run sweep.yaml` end to end on a tiny dataset: prepared once, trials on hard-link clones of it
(the very same image inodes), parallel trials, the final table and compare.png, resume without rework,
retention of the best N; and the local early-stopping decision on a trial's progress files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lanex_operator.api.sweep import parse_sweep_spec
from lanex_operator.local.sweep import validation_history

LANEX = str(Path(sys.executable).parent / "lanex")

TINY = {
    "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": "tiny"},
    "spec": {
        "template": {
            "dataset": {"synthetic": {"clips": 4, "seed": 1}, "size": "1Gi"},
            "training": {"backend": "torch", "backbone": "small", "workers": 1, "gpusPerWorker": 0, "batchSize": 2,
                         "loaderWorkers": 0, "useWorkers": False, "validation": {"enabled": True, "batchSize": 4},
                         "epochs": 1, "height": 32, "width": 64, "largeShm": False},
        },
        "parameters": [{"path": "learningRate", "values": [0.01, 0.05]}],
        "retention": {"keepBest": 1},
    },
}


def run(file: Path, workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LANEX, "run", str(file), "--workspace", str(workspace), *args], capture_output=True,
                          text=True, timeout=600)


def images(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_ino for p in root.rglob("*.jpg")}


@pytest.mark.slow
def test_sweep_prepares_once_and_every_trial_reads_the_same_image_inodes(tmp_path: Path):
    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump(TINY))
    workspace = tmp_path / "ws"
    done = run(file, workspace, "--parallel", "2")
    assert done.returncode == 0, done.stdout + done.stderr

    # the dataset: prepared once (one prepare log, one synth run), then it became the snapshot
    prepare_log = (workspace / "sweeps" / "tiny" / "dataset" / "logs" / "prepare.log").read_text()
    assert prepare_log.count("lanex data synth") == 1
    assert not (workspace / "volumes" / "tiny-data").exists()
    dataset = images(workspace / "snapshots" / "tiny-dataset" / "data")
    assert len(dataset) >= 4

    state = json.loads((workspace / "sweeps" / "tiny" / "state.json").read_text())
    assert (state["phase"], state["datasetSnapshot"], state["trialCount"]) == ("Succeeded", "tiny-dataset", 2)
    assert [t["name"] for t in state["trials"]] == ["tiny-000", "tiny-001"]
    assert [t["parameters"] for t in state["trials"]] == [{"learningRate": 0.01}, {"learningRate": 0.05}]
    assert all(t["phase"] == "Succeeded" and "objective" in t for t in state["trials"])
    assert state["counts"]["succeeded"] == 2
    best = state["bestTrial"]["name"]
    assert best in ("tiny-000", "tiny-001")
    assert Path(state["comparePlot"]).read_bytes().startswith(b"\x89PNG")
    assert "best trial: " + best in done.stdout and "tiny-dataset" in done.stdout

    # the trials' images are the dataset snapshot's inodes (hard links), not copies
    for trial in ("tiny-000", "tiny-001"):
        trial_state = json.loads((workspace / "experiments" / trial / "state.json").read_text())
        spec_source = trial_state["datasetSource"]
        assert spec_source == "fromSnapshot:tiny-dataset"
    kept = images(workspace / "volumes" / f"{best}-data")
    assert kept == dataset
    # retention keepBest 1: the other trial's volume and snapshots are gone, its row stays
    other = "tiny-001" if best == "tiny-000" else "tiny-000"
    assert not (workspace / "volumes" / f"{other}-data").exists()
    assert not any(p.name.startswith(other) for p in (workspace / "snapshots").iterdir())
    assert next(t for t in state["trials"] if t["name"] == other)["deleted"] is True
    # the best trial's snapshot links the dataset files it still shares
    snapshot = workspace / "snapshots" / state["bestTrial"]["snapshot"] / "data"
    assert images(snapshot) == dataset

    # lanex get --workspace lists the sweep with the CRD status's names
    listed = subprocess.run([LANEX, "get", "--workspace", str(workspace), "-o", "json"], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    (swept,) = json.loads(listed.stdout)["sweeps"]
    assert (swept["name"], swept["datasetSnapshot"], swept["bestTrial"]["name"]) == ("tiny", "tiny-dataset", best)
    assert [t["name"] for t in swept["trials"]] == ["tiny-000", "tiny-001"]

    # lanex compare of the local sweep: its trials side by side, and the overlay plot
    plot = tmp_path / "compare.png"
    compared = subprocess.run([LANEX, "compare", "tiny", "--workspace", str(workspace), "--out", str(plot)],
                              capture_output=True, text=True, timeout=60)
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.splitlines()[0].split() == ["tiny-000", "tiny-001"]
    assert compared.stdout.splitlines()[1].split() == ["learningRate", "0.01", "0.05"]
    assert plot.read_bytes().startswith(b"\x89PNG")

    # running the file again resumes: nothing is prepared or trained again
    again = run(file, workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (workspace / "sweeps" / "tiny" / "dataset" / "logs" / "prepare.log").read_text() == prepare_log
    for trial in ("tiny-000", "tiny-001"):
        log = workspace / "experiments" / trial / "logs" / "train.log"
        assert log.read_text().count("\n=== ") == 1  # one run of the train step, ever


def test_a_changed_sweep_spec_is_refused_on_resume(tmp_path: Path):
    from lanex_operator.local.runner import LocalRunError
    from lanex_operator.local.sweep import LocalSweep

    spec = parse_sweep_spec(TINY["spec"])
    LocalSweep("tiny", spec, tmp_path).save()
    changed = parse_sweep_spec({**TINY["spec"], "parallelism": 2})
    with pytest.raises(LocalRunError, match="different spec"):
        LocalSweep("tiny", changed, tmp_path)


def test_validation_history_reads_the_progress_file_else_the_results_history(tmp_path: Path):
    assert validation_history(tmp_path) == []
    (tmp_path / "results.json").write_text(json.dumps({"history": [
        {"epoch": 0, "step": 2, "train_loss": 1.0, "val_accuracy": 0.5, "val_fp": 0.2, "val_fn": 0.3, "val_loss": 0.9},
        {"epoch": 1, "step": 4, "train_loss": 0.8}]}))
    assert validation_history(tmp_path) == [{"epoch": 1, "accuracy": 0.5, "fp": 0.2, "fn": 0.3, "loss": 0.9}]
    (tmp_path / "progress.json").write_text(json.dumps({"state": "training", "validationHistory": [
        {"epoch": 1, "accuracy": 0.4, "fp": 0.1, "fn": 0.1, "loss": None},
        {"epoch": 2, "accuracy": 0.6, "fp": 0.1, "fn": 0.1, "loss": None}]}))
    assert [h["accuracy"] for h in validation_history(tmp_path)] == [0.4, 0.6]
    (tmp_path / "progress.json").write_text('{"state": "train')  # half written: no history, no error
    assert validation_history(tmp_path)[0]["accuracy"] == 0.5


def test_stopping_a_trial_ends_its_process_tree_and_marks_it_stopped(tmp_path: Path):
    import threading
    import time

    from lanex_operator.api.models import parse_spec
    from lanex_operator.local.runner import LocalRunner
    from lanex_operator.plan.steps import StepName

    spec = parse_spec({"dataset": {"synthetic": {"clips": 2000}}, "training": {"epochs": 1}})
    runner = LocalRunner("slow", spec, tmp_path, echo=lambda text: None, quiet=True)
    thread = threading.Thread(target=runner.run, kwargs={"steps": {StepName.DATASET, StepName.PREPARE}})
    thread.start()
    deadline = time.monotonic() + 60
    while runner._process is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process = runner._process
    assert process is not None
    runner.stop("below the median")
    thread.join(timeout=60)
    assert not thread.is_alive() and process.poll() is not None
    state = json.loads((tmp_path / "experiments" / "slow" / "state.json").read_text())
    assert (state["phase"], state["reason"], state["message"]) == ("Stopped", "EarlyStopped", "below the median")
    # the whole process group is gone (the synth ran as a child of sh); zombies awaiting their reaper do not count
    assert live_group_members(process.pid) == []


def live_group_members(group: int, patience: float = 10.0) -> list[int]:
    import time

    deadline = time.monotonic() + patience
    while True:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(stat.parent.name))
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.1)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_preparing_again(tmp_path: Path):
    import signal
    import time

    document = json.loads(json.dumps(TINY))
    document["spec"]["template"]["training"]["epochs"] = 3
    document["spec"].pop("retention")
    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump(document))
    workspace = tmp_path / "ws"
    # SIGINT as a terminal delivers it, also when the suite itself runs as a background job (which
    # inherits SIGINT ignored, and a child keeps an ignored signal across exec).
    process = subprocess.Popen([LANEX, "run", str(file), "--workspace", str(workspace)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = workspace / "experiments" / "tiny-000" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (state.is_file() and '"Training"' in state.read_text()):
        time.sleep(0.2)
    assert state.is_file() and '"Training"' in state.read_text(), "the first trial never started training"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "again to resume the sweep" in err
    assert json.loads(state.read_text())["phase"] == "Failed"  # interrupted: to be run again
    assert processes_mentioning(str(workspace)) == []  # the trials' process trees went with it

    again = run(file, workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    swept = json.loads((workspace / "sweeps" / "tiny" / "state.json").read_text())
    assert swept["phase"] == "Succeeded" and swept["counts"]["succeeded"] == 2
    prepare_log = (workspace / "sweeps" / "tiny" / "dataset" / "logs" / "prepare.log").read_text()
    assert prepare_log.count("\n=== ") == 1  # the dataset was prepared once, by the first run
    assert (workspace / "experiments" / "tiny-000" / "logs" / "train.log").read_text().count("\n=== ") == 2


def processes_mentioning(text: str, patience: float = 10.0) -> list[int]:
    """Live (not zombie) processes whose command line contains `text`, once they had `patience` to exit."""
    import time

    deadline = time.monotonic() + patience
    while True:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and state != "Z":
                found.append(int(proc.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
