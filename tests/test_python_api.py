"""`import lanex` on a local workspace: experiments built and edited in Python, validated as `lanex run`
validates them, run for real (tiny synthetic runs of a few seconds), followed, stopped, compared.

The records are checked against the files the run wrote (results.json, state.json), not against
themselves; the error messages against what `lanex run` prints for the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

import lanex

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
LANEX = Path(sys.executable).with_name("lanex")

pytestmark = pytest.mark.timeout(300)


def tiny(name: str, **training) -> lanex.Experiment:
    """The quickstart, cut to a run of a few seconds: 16 synthetic clips, one process, small images."""
    exp = lanex.Experiment.from_file(QUICKSTART)
    exp.name = name
    return exp.update({"dataset": {"synthetic": {"clips": 16, "seed": 3, "testClips": 4}},
                       "training": {"workers": 1, "epochs": 2, "height": 64, "width": 160, "batchSize": 2,
                                    "validation": {"enabled": True, "batchSize": 4}, **training}})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> lanex.Workspace:
    return lanex.Workspace(tmp_path_factory.mktemp("api") / "ws")


@pytest.fixture(scope="module")
def followed(workspace):
    """One experiment started in the background and followed to its end through `progress()`."""
    os.environ["LANEX_PROGRESS_INTERVAL"] = "0.2"  # the trainer publishes often enough to be seen moving
    try:
        handle = workspace.start(tiny("first"))
        seen = list(handle.progress(interval=0.1))
        final = handle.wait(timeout=240)
    finally:
        os.environ.pop("LANEX_PROGRESS_INTERVAL", None)
    return handle, seen, final


def test_a_started_run_is_followed_through_its_phases_to_its_results(workspace, followed):
    handle, seen, final = followed
    phases = [r.phase.value for r in seen if r.phase]
    assert phases[0] in ("Pending", "ProvisioningDataset", "Downloading")
    assert phases[-1] == "Succeeded" and final.phase is lanex.Phase.SUCCEEDED
    assert [p for p in dict.fromkeys(phases)] == [p for p in ("Pending", "ProvisioningDataset", "Downloading",
                                                              "SharingVolume", "Training", "Snapshotting",
                                                              "Succeeded") if p in phases]  # in lifecycle order
    assert "Training" in phases and "Succeeded" in phases
    training = [r.progress for r in seen if r.phase is lanex.Phase.TRAINING and r.progress is not None]
    assert training and all(isinstance(p, lanex.TrainingProgress) for p in training)
    assert [p.step for p in training] == sorted(p.step for p in training)  # it only moves forward
    assert final.running is False and not handle.running

    output = workspace.path / "volumes" / "first-data" / "experiments" / "first"
    written = json.loads((output / "results.json").read_text())
    assert (final.results.accuracy, final.results.fp, final.results.fn) == (
        written["accuracy"], written["fp"], written["fn"])
    state = json.loads((workspace.path / "experiments" / "first" / "state.json").read_text())
    assert final.snapshot == state["snapshots"][-1]


def test_a_record_is_what_lanex_get_workspace_prints(workspace, followed):
    _, _, final = followed
    shown = subprocess.run([str(LANEX), "get", "--workspace", str(workspace.path), "-o", "json"],
                           capture_output=True, text=True, timeout=60, check=True)
    (document,) = json.loads(shown.stdout)["experiments"]
    assert workspace.get("first").document == document
    assert [r.name for r in workspace.list()] == ["first"]
    record = lanex.ExperimentRecord.from_workspace(document)
    assert (record.phase, record.results, record.snapshot) == (final.phase, final.results, final.snapshot)
    assert record.progress is not None and record.progress.state == "finished"


def test_results_hold_the_curves_and_the_files_of_the_run(workspace, followed):
    results = workspace.results("first")
    written = json.loads((Path(results.output_dir) / "results.json").read_text())
    assert [v.epoch for v in results.validation] == [1, 2]
    assert [e.epoch for e in results.training] == [1, 2]
    assert [e.train_loss for e in results.training] == [r["train_loss"] for r in written["history"]]
    assert results.processes == 1 and results.epochs == written["epochs"]
    assert Path(results.curves).is_file() and Path(results.worst).is_file()


def test_snapshots_and_restore_give_a_verified_volume(workspace, followed):
    _, _, final = followed
    (snapshot,) = workspace.snapshots("first")
    assert snapshot.name == final.snapshot and snapshot.files > 0
    restored = workspace.restore(snapshot.name, "first-copy")
    assert (restored / "experiments" / "first" / "results.json").is_file()
    with pytest.raises(lanex.SnapshotError, match="snapshot 'nope' not found"):
        workspace.restore("nope", "other")


def test_a_second_run_on_the_first_runs_dataset_is_compared_with_it(workspace, followed):
    _, _, final = followed
    second = tiny("second", learningRate=0.01)
    second.set("dataset", {"fromSnapshot": {"snapshotName": final.snapshot}})
    record = workspace.run(second)  # blocking
    assert record.phase is lanex.Phase.SUCCEEDED
    state = json.loads((workspace.path / "experiments" / "second" / "state.json").read_text())
    assert "prepare" not in state["steps"]  # trained on the restored dataset

    first, other = workspace.compare(["first", "second"])
    assert (first.name, other.name) == ("first", "second")
    assert (first.training["learningRate"], other.training["learningRate"]) == (0.04, 0.01)
    assert other.results == record.results and len(other.history) == 2


def test_a_started_run_is_stopped_and_resumes_where_it_stopped(workspace):
    exp = tiny("stopped", epochs=6, validation={"enabled": False, "batchSize": 4})
    handle = workspace.start(exp)
    with pytest.raises(TimeoutError, match="still running"):
        handle.wait(timeout=0.1)  # bounded: the run goes on
    for record in handle.progress(interval=0.1):
        if record.progress is not None and record.progress.step > 0:
            break
    tree = psutil.Process().children(recursive=True)
    stopped = handle.stop()
    assert stopped.phase is lanex.Phase.FAILED and "interrupted" in (stopped.message or "")
    assert stopped.running is False and not handle.running
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []  # every process of the run ended

    resumed = workspace.run(exp)
    assert resumed.phase is lanex.Phase.SUCCEEDED
    log = (workspace.path / "experiments" / "stopped" / "logs" / "train.log").read_text()
    assert "resuming from" in log


# --- errors: named fields, the same messages as `lanex run` ----------------------------------------


def test_a_file_error_is_the_one_lanex_run_prints(tmp_path):
    document = yaml.safe_load(QUICKSTART.read_text())
    document["spec"]["training"]["workers"] = 0
    document["spec"]["training"]["learningRate"] = "fast"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    with pytest.raises(lanex.InvalidSpecError) as raised:
        lanex.Experiment.from_file(bad)
    assert f"{bad}: spec.training.workers: must be >= 1 (got 0)" in str(raised.value)
    assert f"{bad}: spec.training.learningRate" in str(raised.value)
    cli = subprocess.run([str(LANEX), "run", str(bad), "--workspace", str(tmp_path / "ws")], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 2 and cli.stderr.strip() == f"error: {raised.value}"
    with pytest.raises(lanex.InvalidSpecError, match=r"^<document>: spec.training.workers: must be >= 1 \(got 0\)"):
        lanex.Experiment.from_dict(document)


def test_the_api_and_the_cli_default_to_the_same_workspace():
    from lanex_operator.cli.plumbing import DEFAULT_WORKSPACE

    assert lanex.Workspace().path == DEFAULT_WORKSPACE


def test_an_invalid_edit_names_the_field_and_changes_nothing():
    exp = tiny("edits")
    with pytest.raises(lanex.InvalidSpecError, match=r"^spec.training.epochs: must be >= 1 \(got 0\)$"):
        exp.set("training.epochs", 0)
    with pytest.raises(lanex.InvalidSpecError, match=r"^spec.training.learningRte: unknown field"):
        exp.update({"training": {"learningRte": 0.1}})
    with pytest.raises(lanex.InvalidSpecError, match="metadata.name"):
        exp.name = "Not_A_Name"
    assert (exp.name, exp.spec.training.epochs) == ("edits", 2)
    exp.set("training.learning_rate", 0.02).set("spec.training.batchSize", 4)  # snake_case or camelCase
    assert (exp.spec.training.learning_rate, exp.spec.training.batch_size) == (0.02, 4)
    assert lanex.Experiment.from_dict(exp.to_dict()) == exp  # the document round-trips


def test_a_sweep_is_validated_and_edited_like_an_experiment():
    sweep = lanex.Sweep.from_file(ROOT / "examples" / "sweep-quickstart.yaml")
    sweep.set("template.training.epochs", 2).set("parallelism", 2)
    assert (sweep.spec.template.training.epochs, sweep.spec.parallelism) == (2, 2)
    with pytest.raises(lanex.InvalidSpecError, match=r"spec.parameters\[0\] \(learningRate\): value -1"):
        sweep.set("parameters", [{"path": "learningRate", "values": [-1]}])


def test_a_run_that_cannot_start_is_refused_before_anything_runs(tmp_path):
    exp = tiny("private")
    exp.set("dataset", {"download": {"urls": [{"url": "https://example.invalid/tusimple.zip",
                                               "secretRef": {"name": "tusimple-token"}}]}})
    space = lanex.Workspace(tmp_path / "ws")
    with pytest.raises(lanex.RunRefused, match="--secret tusimple-token=file:PATH"):
        space.start(exp)
    with pytest.raises(lanex.SecretSourceError, match="expected NAME=file:PATH"):
        space.run(exp, secrets=["tusimple-token"])
    assert not (tmp_path / "ws" / "experiments" / "private" / "logs").exists()
    with pytest.raises(lanex.LocalRunError, match="no local experiment nope"):
        space.get("nope")


def test_step_output_reaches_a_notebooks_stdout_which_has_no_byte_stream(monkeypatch):
    import codecs
    import io

    from lanex_operator.local.runner import _show

    shown = io.StringIO()  # like ipykernel's stdout: text only
    monkeypatch.setattr(sys, "stdout", shown)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    data = "step 7/21 \u2588\u2588 loss 0.88\n".encode()
    _show(data[:11], decoder)  # the chunk ends inside a character
    _show(data[11:], decoder, final=True)
    assert shown.getvalue() == "step 7/21 \u2588\u2588 loss 0.88\n"
