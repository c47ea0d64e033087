"""Faults on the real control plane: the operator SIGKILLed in every phase, a worker pod deleted
while training, kube-apiserver restarted mid-run; deletion through the real garbage collector.

A phase is held on purpose by pausing the upstream component that would end it (kwok runs pods,
csi-provisioner binds claims, csi-snapshotter makes snapshots ready) or by cordoning the nodes, so
that each crash lands where the test says, not where timing happens to put it.
"""

from __future__ import annotations

from typing import Any

import pytest

SPEC = {
    "dataset": {"synthetic": {"clips": 8, "seed": 0}, "size": "1Gi"},
    "training": {"backend": "torch", "backbone": "small", "workers": 2, "gpusPerWorker": 1, "epochs": 2,
                 "height": 144, "width": 400, "largeShm": False},
    "snapshot": {"enabled": True},
}
CHILD_KINDS = ("pvc", "job", "mpijob", "volumesnapshot")


@pytest.fixture(scope="module")
def lanex(lanex_on_cluster: Any) -> Any:
    return lanex_on_cluster


def experiment(name: str, namespace: str, **spec_changes: Any) -> dict[str, Any]:
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
            "metadata": {"name": name, "namespace": namespace}, "spec": {**SPEC, **spec_changes}}


def phase(lanex: Any, name: str, namespace: str) -> str | None:
    return lanex.cluster.get("lx", name, "-n", namespace).get("status", {}).get("phase")


def nodes(lanex: Any) -> list[str]:
    return [n["metadata"]["name"] for n in lanex.cluster.get("nodes")["items"]]


def test_a_crash_in_every_phase_a_lost_worker_and_an_apiserver_restart_leave_one_of_each_child(lanex):
    cluster, name, namespace = lanex.cluster, "crashes", "faults"
    processes = cluster.processes

    processes["csi-provisioner"].stop()  # the claim stays Pending
    lanex.apply(experiment(name, namespace))
    lanex.wait_for("ProvisioningDataset", lambda: phase(lanex, name, namespace) == "ProvisioningDataset",
                   namespace=namespace)
    lanex.crash_and_restart_operator()

    processes["kwok"].stop()  # the prepare pod is scheduled but never runs (keep this under 40 s)
    processes["csi-provisioner"].start()
    lanex.wait_for("Downloading", lambda: phase(lanex, name, namespace) == "Downloading", namespace=namespace)
    lanex.wait_for("the prepare pod bound to a node", lambda: any(
        p["spec"].get("nodeName") for p in cluster.get("pods", "-n", namespace, "-l",
                                                         f"batch.kubernetes.io/job-name={name}-prepare")["items"]))
    lanex.crash_and_restart_operator()

    for node in nodes(lanex):  # the workers cannot be scheduled: training is held
        cluster.kubectl("cordon", node)
    processes["kwok"].start()
    lanex.wait_for("Training", lambda: phase(lanex, name, namespace) == "Training", namespace=namespace)
    workers = lanex.wait_for("two worker pods", lambda: [
        p for p in cluster.get("pods", "-n", namespace, "-l", f"training.kubeflow.org/job-name={name}-train,"
                               "training.kubeflow.org/job-role=worker")["items"]] or None)
    lanex.crash_and_restart_operator()
    cluster.kubectl("delete", "pod", "-n", namespace, workers[0]["metadata"]["name"], "--wait=true")

    processes["csi-snapshotter"].stop()  # the snapshot is taken but never ready
    for node in nodes(lanex):
        cluster.kubectl("uncordon", node)
    lanex.wait_for("Snapshotting", lambda: phase(lanex, name, namespace) == "Snapshotting", namespace=namespace)
    # The apiserver restarts once the pods are done: kwok (not a kubelet) loses its node leases while
    # the apiserver is away, and pods on a node that went NotReady are never made Ready again by it.
    cluster.restart("kube-apiserver")
    lanex.crash_and_restart_operator()
    processes["csi-snapshotter"].start()

    done = lanex.wait_phase("lx", name, namespace)
    assert done["status"]["results"]["accuracy"] == pytest.approx(lanex.recorded_results["accuracy"])
    for kind in CHILD_KINDS:
        found = [o["metadata"]["name"] for o in lanex.children(kind, namespace, name)]
        assert len(found) == 1, (kind, found)
    launchers = [job["metadata"]["name"] for job in cluster.get("jobs", "-n", namespace)["items"]
                 if any(o["kind"] == "MPIJob" for o in job["metadata"].get("ownerReferences", []))]
    assert launchers == [f"{name}-train-launcher"], launchers


@pytest.mark.parametrize(("retention", "claim_kept", "snapshot_kept"),
                         [({}, True, True), ({"dataset": "Delete", "snapshots": "Delete"}, False, False)],
                         ids=["default retention keeps data", "Delete removes the claim and the snapshots"])
def test_deleting_an_experiment_removes_what_it_owns_through_the_garbage_collector(lanex, retention, claim_kept,
                                                                                   snapshot_kept):
    cluster, namespace = lanex.cluster, "deletion"
    name = "keeps" if claim_kept else "drops"
    lanex.apply(experiment(name, namespace, retention=retention))
    done = lanex.wait_phase("lx", name, namespace)
    claim = lanex.children("pvc", namespace, name)[0]["metadata"]["name"]
    snapshot = done["status"]["snapshots"][-1]["name"]

    cluster.kubectl("delete", "lx", name, "-n", namespace, "--wait=true", "--timeout=60s")
    # kube-controller-manager's garbage collector removes the owned Jobs and the MPIJob.
    lanex.wait_for("the owned Job and MPIJob gone", lambda: not lanex.children("job", namespace, name)
                   and not lanex.children("mpijob", namespace, name), timeout=60)
    lanex.wait_for("the claim's fate", lambda: bool(lanex.children("pvc", namespace, name)) == claim_kept, timeout=60)
    # The snapshot controller removes its finalizers first: a deleted snapshot goes a moment later.
    lanex.wait_for("the snapshot's fate", lambda: (cluster.kubectl("get", "volumesnapshot", snapshot, "-n", namespace,
                                                                   check=False).returncode == 0) == snapshot_kept,
                   timeout=60, namespace=namespace)
    if claim_kept:
        owners = cluster.get("pvc", claim, "-n", namespace)["metadata"].get("ownerReferences", [])
        assert not owners, owners  # nothing left that the collector could follow


def test_workers_no_node_can_hold_show_the_real_schedulers_reason_then_fail_the_training(lanex):
    # 8 GPUs per worker on nodes of 4: the real kube-scheduler sets PodScheduled=False/Unschedulable with its
    # own message, which must reach the Trained condition (one Warning Event), then end the experiment at the
    # chart's bound (timeouts.podStuckSeconds=40 here) instead of waiting for a node that never comes.
    namespace, name = "unschedulable", "too-big"
    training = {**SPEC["training"], "gpusPerWorker": 8}
    lanex.apply(experiment(name, namespace, training=training))

    def trained() -> dict[str, Any] | None:
        status = lanex.cluster.get("lx", name, "-n", namespace).get("status", {})
        found = next((c for c in status.get("conditions", []) if c["type"] == "Trained"), {})
        return found if found.get("reason") == "Unschedulable" and status.get("phase") != "Failed" else None

    shown = lanex.wait_for("Trained to show Unschedulable", trained, timeout=120, namespace=namespace)
    assert shown["status"] == "Unknown"
    assert shown["message"].startswith(f"MPIJob {name}-train: pod {name}-train-worker-")
    assert "Insufficient nvidia.com/gpu" in shown["message"]  # the scheduler's words, not ours
    done = lanex.wait_phase("lx", name, namespace, phases=("Failed",), timeout=180)
    assert done["status"]["reason"] == "TrainingFailed"
    assert "was Unschedulable for " in done["status"]["message"]
    assert "(LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS=40)" in done["status"]["message"]
    events = lanex.cluster.get("events", "-n", namespace, "--field-selector",
                               f"involvedObject.kind=LaneExperiment,involvedObject.name={name}")["items"]
    assert [e["reason"] for e in events if e["type"] == "Warning"].count("Unschedulable") == 1
