"""Every shell block of Getting started's cluster path runs, in order and in one shell, on the real
control plane, and prints what the page says it prints.

The page starts with `make cluster`; here the session's control plane (the `real_cluster` fixture, the
same `lanex_cluster` code that `make cluster` runs) stands in for it: `make` is a shell function that
gives the page that cluster's kubeconfig at `.cluster/kubeconfig` (`make cluster`) and leaves stopping it
to the fixture (`make cluster-down`). Everything else runs as written. The page's operator serves its own
namespace; this file runs before the tests that start the chart's operator for the whole cluster
(tests/test_real_*.py), which the first assertion checks. Run it under `flock /tmp/lanex-cluster.lock`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from docs_site import DOCS, ROOT, environment, shell_blocks

CLUSTER_PAGE = DOCS / "getting-started" / "cluster.md"
MARK = "=== docs block "
# `make cluster` / `make cluster-down` of the page, played by the session's control plane.
MAKE = """make() {
  case "$1" in
    cluster) mkdir -p .cluster && cp "$FIXTURE_KUBECONFIG" .cluster/kubeconfig ;;
    cluster-down) : ;;
    *) echo "make $1: not part of this page" >&2; return 2 ;;
  esac
}
"""


@pytest.fixture(scope="module")
def page_output(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """The output of each block of the page (by its index), all run in one shell in an empty folder
    holding the repository's crds/ and examples/."""
    workdir = tmp_path_factory.mktemp("getting-started-cluster")
    for folder in ("crds", "examples"):
        shutil.copytree(ROOT / folder, workdir / folder, dirs_exist_ok=True)
    chart_operator = subprocess.run(["kubectl", "--kubeconfig", str(real_cluster.kubeconfig), "get", "deployment",
                                     "-n", "lanex-system", "-o", "name"], capture_output=True, text=True,
                                    env=environment(), timeout=60)
    assert chart_operator.stdout.strip() == "", (
        "the chart's operator already serves every namespace of this control plane: run this file before "
        "tests/test_real_*.py (pytest's file order does)")
    blocks = shell_blocks(CLUSTER_PAGE)
    script = MAKE + "".join(f"echo '{MARK}{index}'\n{block}" for index, block in enumerate(blocks))
    env = dict(environment(), FIXTURE_KUBECONFIG=str(real_cluster.kubeconfig))
    env.pop("KUBECONFIG", None)
    # Its own process group: whatever the page started in the background (the operator) ends with it,
    # also when a block fails before the page's own `kill`.
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        stdout, stderr = shell.communicate(timeout=600)
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shell.wait()
    done = subprocess.CompletedProcess(shell.args, shell.returncode, stdout, stderr)
    log = workdir / "operator.log"
    assert done.returncode == 0, (f"the page's blocks failed (exit {done.returncode}):\n{done.stdout[-6000:]}\n"
                                  f"{done.stderr[-4000:]}\noperator.log:\n"
                                  f"{log.read_text()[-4000:] if log.exists() else '-'}")
    parts = done.stdout.split(MARK)[1:]
    assert len(parts) == len(blocks) >= 4
    return {int(part.split("\n", 1)[0]): part.split("\n", 1)[1] for part in parts}


@pytest.mark.slow
def test_the_cluster_page_takes_the_quickstart_to_succeeded_and_cleans_up(page_output: dict[int, str]) -> None:
    nodes = [line.split() for line in page_output[0].splitlines()[1:]]
    assert len(nodes) == 4 and all(node[1] == "Ready" for node in nodes)
    assert "laneexperiment demo/quickstart created" in page_output[2]
    rows = [line.split() for line in page_output[2].splitlines()]
    assert any(row[:2] == ["quickstart", "Succeeded"] for row in rows)
    for condition, reason in (("Preflight", "Passed"), ("DatasetReady", "Bound"), ("DataPrepared", "Completed"),
                              ("VolumeShared", "AlreadyReadWriteMany"), ("Trained", "Succeeded"),
                              ("Snapshotted", "Ready"), ("Succeeded", "Succeeded")):
        assert [condition, "True", reason] in [row[:3] for row in rows], condition
    for child in ("persistentvolumeclaim/quickstart-data", "job.batch/quickstart-prepare",
                  "mpijob.kubeflow.org/quickstart-train", "volumesnapshot.snapshot.storage.k8s.io/quickstart-"):
        assert child in page_output[2], child
    assert 'namespace "demo" deleted' in page_output[3]
