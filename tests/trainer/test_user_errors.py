"""Every error a user can cause, for every `lanex` command, ends in one clear line and exit 2.

Walks the commands with what people get wrong: a mistyped option or command, a missing argument, a
value out of range, a file that is missing, is not YAML or is not what the command reads, a weights
file that is no state dict, no Kubernetes configuration. Each runs the real `lanex` console script;
its stderr must end in one `error: ...` line that says what is wrong, with no traceback or usage
panel before it (a command may log what it did up to then, as `lanex train` does).
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from trainer_helpers import LANEX, VENV_BIN

ROOT = Path(__file__).resolve().parents[2]

# (command line, what the error line says); DATA is the prepared dataset, the rest lives in the test's folder.
CASES: list[tuple[list[str], str]] = [
    # the command line itself
    (["bogus"], "No such command 'bogus'"),
    (["train", "--bogus"], "No such option: --bogus (see `lanex train --help`)"),
    (["launch"], "Missing argument 'command'"),
    (["launch", "--processes", "0", "--", "true"], "Invalid value for '--processes'"),
    (["data", "synth", "--out", "synth", "--clips", "0"], "Invalid value for '--clips'"),
    (["operator", "-n", "a", "-A"], "--all-namespaces and --namespace exclude each other"),
    (["launch", "--launcher", "bogus", "--", "true"], "launcher 'bogus': expected auto, torchrun, mpirun or horovodrun"),
    (["import-checkpoint", "list.pt", "--from", "bogus", "--out", "x.pt"], "--from 'bogus': expected one of"),
    (["get", "-o", "bogus"], "--output bogus: must be json or yaml"),
    (["render", "experiment.yaml", "-o", "bogus"], "-o bogus: expected yaml or json"),
    (["run", "experiment.yaml", "--secret", "bogus"], "--secret bogus=...: expected NAME=file:PATH or NAME=env:VAR"),
    # training settings
    (["train", "--set", "foo"], "--set 'foo': expected key=value"),
    (["train", "--data-root", "DATA", "--output-dir", "out", "--set", "bogus=1"], "bogus: Extra inputs are not permitted"),
    (["train", "--output-dir", "out"], "data_root: Field required"),
    (["train", "--data-root", "DATA", "--output-dir", "out", "--height", "17"], "must be a multiple of 16, got 17"),
    (["train", "--config", "missing.yaml"], "config file missing.yaml: not found"),
    (["train", "--config", "broken.yaml"], "config file broken.yaml: not valid YAML/JSON: line 1, column 22"),
    (["train", "--data-root", "nowhere", "--output-dir", "out"], "data_root nowhere: not prepared"),
    # pretrained weights that are no state dict (the issue's case), or no torch file at all
    (["train", "--data-root", "DATA", "--output-dir", "w1", "--backbone", "resnet18", "--pretrained-weights", "list.pt",
      "--epochs", "1"], "pretrained weights file list.pt does not hold a state dict of tensors"),
    (["train", "--data-root", "DATA", "--output-dir", "w2", "--backbone", "resnet18", "--pretrained-weights", "text.pt",
      "--epochs", "1"], "pretrained weights file text.pt was not written by torch.save"),
    (["train", "--data-root", "DATA", "--output-dir", "w3", "--backbone", "resnet18", "--pretrained-weights",
      "missing.pt", "--epochs", "1"], "pretrained_weights: no such file missing.pt"),
    # files the other commands read
    (["eval", "--pred", "missing", "--gt", "missing"], "cannot read missing"),
    (["eval", "--pred", "text.pt", "--gt", "text.pt"], "text.pt line 1: invalid JSON"),
    (["predict", "--checkpoint", "missing.pt", "--images", ".", "--out", "p"], "checkpoint missing.pt: not found"),
    (["predict", "--checkpoint", "list.pt", "--images", ".", "--out", "p"], "checkpoint list.pt: not a usable lanex checkpoint"),
    (["import-checkpoint", "missing.pt", "--from", "scnn-pytorch", "--out", "x.pt"], "missing.pt: no such file"),
    (["import-checkpoint", "list.pt", "--from", "scnn-pytorch", "--out", "x.pt"], "neither an SCNN_Pytorch checkpoint"),
    (["worker", "--", "/nonexistent/sshd"], "/nonexistent/sshd is not installed or not on PATH"),
    (["run", "missing.yaml"], "missing.yaml: cannot read"),
    (["run", "broken.yaml"], "broken.yaml: invalid YAML at line 1, column 22"),
    (["run", "configmap.yaml"], "apiVersion: must be lanex.dev/v1alpha1 (got 'v1')"),
    (["run", "invalid.yaml"], "spec.training.workers"),
    (["submit", "missing.yaml"], "missing.yaml: cannot read"),
    (["render", "missing.yaml"], "missing.yaml: cannot read"),
    (["render", "experiment.yaml", "--values", "missing.yaml"], "missing.yaml: cannot read chart values"),
    (["render", "experiment.yaml", "--values", "broken.yaml"], "broken.yaml: invalid YAML at line 1, column 22"),
    (["data", "synth", "--out", "/proc/lanex-cannot-write-here"], "cannot write the dataset to /proc/lanex-cannot-write-here"),
    (["data", "download", "--url", "ftp://example.com/train_set.zip", "--out", "d"], "unsupported URL scheme 'ftp'"),
    (["data", "download", "--url", "https://example.com/a.zip", "--sha256", "zz", "--out", "d"], "is not a SHA-256"),
    (["data", "download", "--url", "missing.zip", "--out", "d"], "missing.zip: no such file"),
    (["data", "download", "--url", "https://example.com/a.zip", "--credentials", "nowhere", "--out", "d"],
     "credentials folder nowhere does not exist"),
    (["data", "prepare", "--root", "nowhere"], "label file 'label_data_0313.json' not found"),
    # MLflow tracking
    (["train", "--data-root", "DATA", "--output-dir", "out", "--set", "mlflow={tracking_uri: ftp://x, experiment_name: e}"],
     "mlflow.tracking_uri: String should match pattern"),
    (["mlflow", "replay", "nowhere"], "nowhere/mlflow: this output directory has no MLflow run (no run.json)"),
    (["mlflow", "sweep-run", "--tracking-uri", "http://127.0.0.1:9", "--experiment-name", "e", "--sweep", "ns/s",
      "--sweep-uid", "u", "--end", "DONE"], "--end 'DONE': expected FINISHED, FAILED or KILLED"),
    (["mlflow", "sweep-run", "--tracking-uri", "http://127.0.0.1:9", "--experiment-name", "e", "--sweep", "ns/s",
      "--sweep-uid", "u", "--params", "{"], "--params/--tags: not JSON"),
    (["run", "tracked.yaml"], "spec.tracking.mlflow.credentialsSecretRef names team-mlflow: pass --secret team-mlflow="),
    # no cluster to talk to (KUBECONFIG names no file)
    (["get"], "no usable Kubernetes configuration"),
    (["describe", "nothing"], "no usable Kubernetes configuration"),
    (["logs", "nothing"], "no usable Kubernetes configuration"),
    (["wait", "nothing", "--timeout", "1"], "no usable Kubernetes configuration"),
    (["delete", "nothing"], "no usable Kubernetes configuration"),
    (["compare", "a", "b"], "no usable Kubernetes configuration"),
    (["submit", "experiment.yaml"], "no usable Kubernetes configuration"),
    (["snapshots", "list", "--cluster"], "no usable Kubernetes configuration"),
]


def _files(folder: Path) -> None:
    torch.save([1, 2, 3], folder / "list.pt")
    (folder / "text.pt").write_text("hello\n")
    (folder / "broken.yaml").write_text("apiVersion: [unclosed")
    (folder / "configmap.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    experiment = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    tracked = {**experiment, "spec": {**experiment["spec"], "tracking": {"mlflow": {
        "trackingUri": "http://127.0.0.1:9", "experimentName": "e", "credentialsSecretRef": {"name": "team-mlflow"}}}}}
    (folder / "tracked.yaml").write_text(yaml.safe_dump(tracked))
    experiment["spec"]["training"]["workers"] = 0
    (folder / "invalid.yaml").write_text(yaml.safe_dump(experiment))


@pytest.fixture(scope="module")
def outcomes(prepared_data, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("user-errors")
    _files(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           "KUBECONFIG": str(folder / "no-kubeconfig"), "COLUMNS": "200"}
    env.pop("KUBERNETES_SERVICE_HOST", None)

    def run(case: tuple[list[str], str]) -> subprocess.CompletedProcess:
        argv = [str(prepared_data) if word == "DATA" else word for word in case[0]]
        return subprocess.run([LANEX, *argv], cwd=folder, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:  # each is a fresh interpreter: overlap their start-ups
        return {" ".join(argv): done for (argv, _), done in zip(CASES, pool.map(run, CASES))}


@pytest.mark.parametrize("argv, says", CASES, ids=[" ".join(argv)[:60] for argv, _ in CASES])
def test_user_error_ends_in_one_clear_line_and_exit_2(outcomes, argv, says):
    done = outcomes[" ".join(argv)]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "│" not in done.stderr, done.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and says in lines[-1], lines[-3:]
    # Only `lanex train` logs (its effective config) before its error; every other command says one line.
    if argv[0] != "train":
        assert len(lines) == 1, lines
