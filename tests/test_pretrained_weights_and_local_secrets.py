"""Pretrained weights fetched once by the prepare step, and `lanex run --secret` for private sources.

The prepare scripts the plan writes run here as real `sh` processes against a real HTTP server on
127.0.0.1; a volume is snapshotted and restored with the local snapshot store, as a second
experiment would find it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from file_server import Served, file_server
from lanex_operator.api.models import InvalidSpecError, parse_spec
from lanex_operator.local.secrets import SecretSourceError, materialise, parse_secret_option
from lanex_operator.local.snapshots import SnapshotStore
from lanex_operator.plan.steps import plan_for
from lanex_trainer.data.synth import generate_dataset

LANEX = str(Path(sys.executable).with_name("lanex"))
WEIGHTS = b"PK\x03\x04 not really a state dict, only bytes to fetch" * 100
WEIGHTS_SHA = hashlib.sha256(WEIGHTS).hexdigest()
TOKEN = "Bearer run-secret-93ab1e"


def _spec(weights: dict, dataset: dict | None = None) -> dict:
    return {"dataset": dataset or {"synthetic": {"clips": 3, "seed": 1}},
            "training": {"backbone": "vgg16_bn", "pretrainedWeights": weights}}


def _run_script(plan, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # where `lanex` is
    return subprocess.run(list(plan.prepare.container.command), capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {}), "PATH": path})


# --- the API -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("weights", "problem"), [
    ({"url": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"}, "pretrainedWeights.sha256: required with url"),
    ({"path": "w.pth", "sha256": "a" * 64}, "sha256 and secretRef are only allowed with url"),
    ({"path": "../outside.pth"}, "pretrainedWeights.path: must stay inside the volume"),
    ({"url": "https://h/w.pth", "sha256": "6c64b3"}, "pretrainedWeights.sha256: does not match the pattern"),
    # torchvision's 8-digit prefix is 32 bits: no integrity check for a file fetched from a URL
    ({"url": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth", "sha256": "6c64b313"},
     r"pretrainedWeights.sha256: does not match the pattern \^\[0-9a-fA-F\]\{64\}\$"),
    ({"url": "https://h/w.pth", "sha256": "a" * 63}, "pretrainedWeights.sha256: does not match the pattern"),
    ({"url": "https://h/w.pth?sv=1&sig=x", "sha256": "a" * 64}, "pretrainedWeights.url: must not hold a query string"),
])
def test_weights_spec_problems_name_the_field(weights, problem):
    with pytest.raises(InvalidSpecError, match=problem if "\\" in problem else problem.replace("?", r"\?")):
        parse_spec(_spec(weights))


def test_a_weights_file_cached_under_a_digest_prefix_is_still_named_with_path():
    spec = parse_spec(_spec({"path": "weights/6c64b313.pth"}))
    assert plan_for("old-cache", "local", spec, mount_root="/vol").train.pretrained_weights == "/vol/weights/6c64b313.pth"


def test_credentials_in_a_download_url_are_refused_pointing_at_secret_ref():
    for url, problem in (("https://user:pw@host/train_set.zip", "must not hold user:password"),
                         ("https://acct.blob.core.windows.net/c/train_set.zip?sv=1&sig=abc", "must not hold a query")):
        with pytest.raises(InvalidSpecError, match=rf"spec.dataset.download.urls\[0\].url: {problem}.*secretRef"):
            parse_spec({"dataset": {"download": {"urls": [{"url": url}]}}})


# --- fetched once, cached by checksum ------------------------------------------------------------


def test_weights_are_fetched_once_and_a_restored_snapshot_does_not_fetch_them_again(tmp_path):
    with file_server(Served(files={"/models/vgg16_bn-6c64b313.pth": WEIGHTS})) as served:
        weights = {"url": f"{served.base}/models/vgg16_bn-6c64b313.pth", "sha256": WEIGHTS_SHA}
        first = plan_for("first", "local", parse_spec(_spec(weights)), mount_root=str(tmp_path / "vol-a"))
        assert first.train.pretrained_weights == str(tmp_path / "vol-a" / "weights" / f"{WEIGHTS_SHA}.pth")
        assert first.train.train_command[-2:] == ("--pretrained-weights", first.train.pretrained_weights)

        ran = _run_script(first)
        assert ran.returncode == 0, ran.stderr
        assert Path(first.train.pretrained_weights).read_bytes() == WEIGHTS
        assert [path for path, _ in served.requests] == ["/models/vgg16_bn-6c64b313.pth"]

        again = _run_script(first)  # the same volume: prepared marker, weights recorded
        assert again.returncode == 0 and "dataset already prepared" in again.stdout
        assert len(served.requests) == 1

        store = SnapshotStore(tmp_path / "snapshots")
        store.create(tmp_path / "vol-a", "first-20260101000000", experiment="first")
        store.restore("first-20260101000000", tmp_path / "vol-b")
        second = plan_for("second", "local", parse_spec(_spec(weights, {"fromSnapshot": {
            "snapshotName": "first-20260101000000"}})), mount_root=str(tmp_path / "vol-b"))
        assert second.prepare is not None and second.prepare.commands == ()  # weights only, no data step
        assert "dataset already prepared" not in second.prepare.script()
        restored = _run_script(second)
        assert restored.returncode == 0, restored.stderr
        assert len(served.requests) == 1  # found on the restored volume, verified by checksum: no fetch
        assert Path(second.train.pretrained_weights).read_bytes() == WEIGHTS


def test_weights_with_a_wrong_digest_fail_the_prepare_step_and_are_not_used(tmp_path):
    with file_server(Served(files={"/w.pth": WEIGHTS})) as served:
        plan = plan_for("bad", "local", parse_spec(_spec({"url": f"{served.base}/w.pth", "sha256": "deadbeef" * 8})),
                        mount_root=str(tmp_path / "vol"))
        ran = _run_script(plan)
    assert ran.returncode == 1
    assert f"error: {served.base}/w.pth: checksum mismatch, expected sha256 {'deadbeef' * 8}" in ran.stderr
    assert not Path(plan.train.pretrained_weights).exists()
    assert not (tmp_path / "vol" / "tusimple_data" / ".lanex-prepared").exists()


def test_weights_path_on_the_volume_is_passed_as_is_and_fetches_nothing():
    plan = plan_for("onvol", "default", parse_spec(_spec({"path": "weights/imagenet/vgg16_bn.pth"})))
    assert plan.train.pretrained_weights == "/mnt/weights/imagenet/vgg16_bn.pth"
    assert plan.prepare is not None and plan.prepare.weights_commands == ()
    assert plan.train.from_scratch is None


# --- lanex run --secret ------------------------------------------------------------------------


def test_secret_options_are_parsed_and_read_from_a_file_folder_or_variable(tmp_path, monkeypatch):
    env_file = tmp_path / "creds.env"
    env_file.write_text("# TuSimple mirror\nAuthorization=Bearer a=b\n")
    folder = tmp_path / "creds"
    folder.mkdir()
    (folder / "sas").write_text("sv=1&sig=x")
    monkeypatch.setenv("LANEX_TEST_CREDS", "Authorization=Bearer from-env")
    sources = {s.name: s for s in map(parse_secret_option, [f"a=file:{env_file}", f"b=file:{folder}",
                                                            "c=env:LANEX_TEST_CREDS"])}
    written = materialise(sources, ("a", "b", "c"), tmp_path / "out")
    assert [sorted(p.name for p in f.iterdir()) for f in written] == [["Authorization"], ["sas"], ["Authorization"]]
    assert (written[0] / "Authorization").read_text() == "Bearer a=b"
    assert (written[2] / "Authorization").read_text() == "Bearer from-env"
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == "0o700"
    assert oct((written[1] / "sas").stat().st_mode & 0o777) == "0o600"
    for bad, problem in (("a", "expected NAME=file:PATH or NAME=env:VAR"), ("Bad=env:X", "not a Secret name"),
                         ("a=s3:x", "expected NAME=file:PATH")):
        with pytest.raises(SecretSourceError, match=problem):
            parse_secret_option(bad)
    with pytest.raises(SecretSourceError, match="environment variable LANEX_UNSET_VAR is not set"):
        materialise({"d": parse_secret_option("d=env:LANEX_UNSET_VAR")}, ("d",), tmp_path / "out2")


def test_lanex_run_without_the_named_secret_exits_2_naming_the_option(tmp_path):
    experiment = tmp_path / "private.yaml"
    experiment.write_text(json.dumps({"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
                                      "metadata": {"name": "private"}, "spec": {"dataset": {"download": {"urls": [
                                          {"url": "https://h/train_set.zip", "secretRef": {"name": "mirror"}}]}}}}))
    result = subprocess.run([LANEX, "run", str(experiment), "--workspace", str(tmp_path / "ws")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "the spec's secretRef names mirror: pass --secret mirror=file:PATH (or =env:VAR)" in result.stderr


def _dataset_zip(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


@pytest.mark.slow
def test_lanex_run_downloads_a_private_copy_with_a_secret_from_the_environment(tmp_path):
    generate_dataset(tmp_path / "synth", clips=3, test_clips=1, seed=1)
    archive = _dataset_zip(tmp_path / "synth")
    with file_server(Served(files={"/private/tusimple.zip": archive}, required_headers={"Authorization": TOKEN})) as served:
        experiment = tmp_path / "private.yaml"
        experiment.write_text(json.dumps({
            "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": "private"},
            "spec": {"dataset": {"download": {"urls": [{"url": f"{served.base}/private/tusimple.zip",
                                                        "sha256": hashlib.sha256(archive).hexdigest(),
                                                        "secretRef": {"name": "mirror"}}]}},
                     "training": {"backbone": "small", "backend": "torch", "workers": 1, "gpusPerWorker": 0,
                                  "epochs": 1, "batchSize": 2, "loaderWorkers": 0, "useWorkers": False,
                                  "height": 32, "width": 64, "validation": {"enabled": False}},
                     "snapshot": {"enabled": False}}}))
        result = subprocess.run(
            [LANEX, "run", str(experiment), "--workspace", str(tmp_path / "ws"), "--secret", "mirror=env:MIRROR_CREDS"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "MIRROR_CREDS": f"Authorization={TOKEN}"})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert [headers.get("Authorization") for _, headers in served.requests] == [TOKEN]
    experiment_dir = tmp_path / "ws" / "experiments" / "private"
    assert not (experiment_dir / "secrets").exists()  # removed once the prepare step ended
    state = json.loads((experiment_dir / "state.json").read_text())
    assert state["phase"] == "Succeeded"
    written = result.stdout + result.stderr + "".join(p.read_text() for p in (experiment_dir / "logs").iterdir())
    written += (experiment_dir / "state.json").read_text()
    assert TOKEN not in written and TOKEN.split()[1] not in written
    index = tmp_path / "ws" / "volumes" / "private-data" / "tusimple_data" / "lanex_index" / "prepared.json"
    assert json.loads(index.read_text())["summary"]["layout"]["name"] == "official"


def test_lanex_run_warns_before_anything_runs_when_vgg16_bn_has_no_weights(tmp_path):
    experiment = tmp_path / "scratch.yaml"
    experiment.write_text(json.dumps({"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
                                      "metadata": {"name": "scratch"}, "spec": {
                                          "dataset": {"download": {"urls": [{"url": (tmp_path / "absent.zip").as_uri()}]}},
                                          "training": {"backbone": "vgg16_bn"}}}))
    result = subprocess.run([LANEX, "run", str(experiment), "--workspace", str(tmp_path / "ws")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1  # the prepare step fails on the absent file, after the warning
    warning = "[lanex] warning: TrainingFromScratch: spec.training.pretrainedWeights is not set: vgg16_bn trains"
    assert warning in " ".join(result.stderr.split())
    assert result.stderr.index("TrainingFromScratch") < result.stderr.index("prepare: running")
