"""`lanex submit|get|describe|compare|delete` with a LaneSweep, as real subprocesses against the emulated
cluster and the real operator; `lanex compare` of local runs too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(180)

LANEX = Path(sys.executable).with_name("lanex")


def lanex(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "200"}
    return subprocess.run([str(LANEX), *args], env=env, capture_output=True, text=True, timeout=timeout)


SWEEP = {
    "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": "cli"},
    "spec": {"template": {"dataset": {"synthetic": {"clips": 4}}, "training": {"workers": 1, "epochs": 2}},
             "parameters": [{"path": "learningRate", "values": [0.01, 0.02]}], "parallelism": 2},
}


def test_a_sweep_through_submit_get_describe_compare_and_delete(api_server, running_operator, tmp_path: Path):
    kubeconfig = api_server.kubeconfig
    api_server.knobs.results_for.update({"cli-000": {"accuracy": 0.91, "fp": 0.1, "fn": 0.1},
                                         "cli-001": {"accuracy": 0.93, "fp": 0.1, "fn": 0.1}})
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(SWEEP))

    submitted = lanex(kubeconfig, "submit", str(file), "--processes", "2")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "lanesweep default/cli created"
    assert api_server.get("lanesweeps", "cli", "default")["spec"]["template"]["training"]["workers"] == 2
    again = lanex(kubeconfig, "submit", str(file), "--processes", "2")
    assert (again.returncode, again.stdout.strip().split(" (")[0]) == (0, "lanesweep default/cli already exists with "
                                                                          "the same spec")
    assert lanex(kubeconfig, "submit", str(file)).returncode == 1  # a different spec is refused

    api_server.wait_for(lambda: ((api_server.get("lanesweeps", "cli", "default") or {}).get("status") or {})
                        .get("phase") == "Succeeded", timeout=60, message="the sweep to succeed")
    listed = lanex(kubeconfig, "get")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()[-2:]
    assert header.split() == ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "OBJECTIVE", "AGE"]
    assert row.split()[:6] == ["cli", "Succeeded", "2", "0", "cli-001", "0.9300"]
    assert "cli-000" in listed.stdout  # the trials are experiments too
    one = json.loads(lanex(kubeconfig, "get", "cli", "-o", "json").stdout)
    assert (one["kind"], one["status"]["bestTrial"]["name"]) == ("LaneSweep", "cli-001")

    described = lanex(kubeconfig, "describe", "cli")
    assert described.returncode == 0, described.stderr
    for text in ("Kind:          LaneSweep", "Snapshot:    cli-dataset", "* cli-001", "learningRate=0.02",
                 "best trial: cli-001 (learningRate=0.02), test accuracy 0.9300", "Succeeded"):
        assert text in described.stdout, text

    plot = tmp_path / "compare.png"
    compared = lanex(kubeconfig, "compare", "cli", "--out", str(plot))
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0].split() == ["cli-000", "cli-001"]
    assert lines[1].split() == ["learningRate", "0.01", "0.02"]
    assert next(line for line in lines if line.startswith("test accuracy")).split()[2:] == ["0.9100", "0.9300"]
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert lanex(kubeconfig, "compare", "nosuch").returncode == 1

    deleted = lanex(kubeconfig, "delete", "cli", "--wait", "--timeout", "30")
    assert deleted.returncode == 0, deleted.stderr
    assert "removes: 2 trial(s)" in deleted.stdout and "lanesweep default/cli is gone" in deleted.stdout
    api_server.wait_for(lambda: not api_server.list("laneexperiments", "default", label_selector="lanex.dev/sweep=cli"),
                        timeout=30, message="the trials to go with the sweep")


def test_an_invalid_sweep_file_names_the_parameter_and_exits_2(api_server, tmp_path: Path):
    bad = dict(SWEEP, spec=dict(SWEEP["spec"], parameters=[{"path": "learningRat", "values": [0.1]}]))
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(bad))
    done = lanex(api_server.kubeconfig, "submit", str(file))
    assert done.returncode == 2
    assert "spec.parameters[0] (learningRat): unknown field of spec.template.training" in done.stderr
