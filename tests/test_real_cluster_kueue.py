"""Kueue on the real control plane: two experiments of 2 GPUs each and a ClusterQueue of 2 GPUs.

The real Kueue (v0.17, lanex_cluster/kueue.py) admits the MPIJobs the operator creates suspended in a
LocalQueue: it makes each a Workload, reserves quota, unsuspends it (merging the flavor's node
labels into its pod templates) and releases the quota when the MPIJob finishes. The ClusterQueue
starts on hold (`stopPolicy: Hold`) until both MPIJobs wait in it, so which one is first is Kueue's
FIFO choice, never a race with the other's dataset preparation; the order is then read from the
objects' own timestamps.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest

KUEUE = "kueue.x-k8s.io/v1beta2"
NAMESPACE = "kueue-lanes"
LOCAL_QUEUE = "lanes"
CLUSTER_QUEUE = "lanex-gpus"
FLAVOR = "gpu-pool"
NAMES = ("kq-one", "kq-two")
WAIT_S = 120
# What Kueue's scheduler says of a workload the quota cannot take yet.
QUOTA_SHORT = "insufficient unused quota for nvidia.com/gpu in flavor " + FLAVOR


def resource_flavor() -> dict[str, Any]:
    # The fake nodes' AKS pool label: Kueue merges it into the admitted pods' nodeSelector.
    return {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
            "spec": {"nodeLabels": {"agentpool": "gpu"}}}


def cluster_queue(stop_policy: str) -> dict[str, Any]:
    quota = {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "2"}
    return {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
            "spec": {"namespaceSelector": {}, "stopPolicy": stop_policy,
                     "resourceGroups": [{"coveredResources": list(quota), "flavors": [
                         {"name": FLAVOR, "resources": [{"name": k, "nominalQuota": v} for k, v in quota.items()]}]}]}}


def local_queue() -> dict[str, Any]:
    return {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": LOCAL_QUEUE, "namespace": NAMESPACE},
            "spec": {"clusterQueue": CLUSTER_QUEUE}}


def experiment(name: str) -> dict[str, Any]:
    """examples/quickstart.yaml's synthetic run, on 2 workers of 1 GPU, queued in Kueue."""
    return {
        "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "dataset": {"synthetic": {"clips": 40, "seed": 0}, "size": "1Gi"},
            "training": {"backend": "torch", "backbone": "small", "workers": 2, "gpusPerWorker": 1, "batchSize": 8,
                         "loaderWorkers": 0, "useWorkers": False, "epochs": 2, "height": 144, "width": 400,
                         "largeShm": False},
            "scheduler": {"type": "kueue", "queueName": LOCAL_QUEUE},
            "snapshot": {"enabled": False},
        },
    }


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def at(condition: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(condition["lastTransitionTime"].replace("Z", "+00:00"))


def events(cluster: Any, kind: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    return cluster.get("events", "-n", NAMESPACE, "--field-selector", selector)["items"]


def event_time(event: dict[str, Any]) -> datetime.datetime:
    stamp = event.get("eventTime") or event.get("firstTimestamp")
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def kueue_queues(lanex_on_cluster: Any) -> Any:
    lanex = lanex_on_cluster
    lanex.cluster.ensure_namespace(NAMESPACE)
    lanex.cluster.apply_objects([resource_flavor(), cluster_queue("Hold"), local_queue()])
    yield lanex
    lanex.cluster.kubectl("delete", "lx", "--all", "-n", NAMESPACE, "--wait=true", "--timeout=60s", check=False)
    lanex.cluster.kubectl("delete", "localqueue", LOCAL_QUEUE, "-n", NAMESPACE, check=False)
    lanex.cluster.kubectl("delete", "clusterqueue", CLUSTER_QUEUE, "resourceflavor", FLAVOR, check=False)


def test_two_experiments_share_a_two_gpu_cluster_queue_one_after_the_other_through_real_kueue(kueue_queues):
    lanex = kueue_queues
    cluster = lanex.cluster

    def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        return lanex.wait_for(what, probe, timeout=timeout, namespace=NAMESPACE)

    for name in NAMES:
        lanex.apply(experiment(name))

    def mpijob(name: str) -> dict[str, Any]:
        return cluster.get("mpijob", f"{name}-train", "-n", NAMESPACE)

    def workload(name: str) -> dict[str, Any]:
        """The Workload Kueue made for the experiment's MPIJob (it owns it)."""
        uid = mpijob(name)["metadata"]["uid"]
        found = [w for w in cluster.get("workloads", "-n", NAMESPACE)["items"]
                 if any(o["uid"] == uid for o in w["metadata"].get("ownerReferences", []))]
        assert len(found) == 1, [w["metadata"]["name"] for w in found]
        return found[0]

    def all_queued() -> list[dict[str, Any]] | None:
        experiments = [cluster.get("lx", name, "-n", NAMESPACE) for name in NAMES]
        queued = [e for e in experiments if conditions(e).get("Queued", {}).get("status") == "True"]
        return experiments if len(queued) == len(NAMES) else None

    # On hold: both MPIJobs wait suspended in the queue, each with a pending Workload of Kueue's.
    held = wait_for("both experiments to report Queued", all_queued)
    for exp in held:
        queued = conditions(exp)["Queued"]
        assert queued["reason"] == "WaitingForAdmission", queued
        assert queued["message"].startswith(f"MPIJob {exp['metadata']['name']}-train waits in Kueue LocalQueue "
                                            f"{LOCAL_QUEUE} for admission"), queued
        assert exp["status"]["phase"] == "Training", exp["status"]
        assert mpijob(exp["metadata"]["name"])["spec"]["runPolicy"]["suspend"] is True
    for name in NAMES:
        pending = wait_for(f"Kueue's Workload for {name}",
                           lambda name=name: (lambda w: w if "QuotaReserved" in conditions(w) else None)(workload(name)))
        assert conditions(pending)["QuotaReserved"]["status"] == "False", pending["status"]
        assert pending["spec"]["queueName"] == LOCAL_QUEUE
        gpus = sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) * p["count"]
                   for p in pending["spec"]["podSets"] for c in p["template"]["spec"]["containers"])
        assert gpus == 2, pending["spec"]["podSets"]
    assert cluster.get("pods", "-n", NAMESPACE, "-l", "training.kubeflow.org/job-role=worker")["items"] == []

    # Released: quota for one. Kueue admits the first in its queue, the other waits for the quota.
    cluster.apply_objects([cluster_queue("None")])

    def finished(name: str) -> dict[str, Any] | None:
        exp = cluster.get("lx", name, "-n", NAMESPACE)
        phase = (exp.get("status") or {}).get("phase")
        assert phase != "Failed", exp["status"]
        return exp if phase == "Succeeded" else None

    done = {name: wait_for(f"{name} to succeed", lambda name=name: finished(name), timeout=240) for name in NAMES}

    workloads = {name: workload(name) for name in NAMES}
    admitted_at = {name: at(conditions(w)["Admitted"]) for name, w in workloads.items()}
    first, second = sorted(NAMES, key=lambda name: admitted_at[name])
    # The second was admitted only once the first's MPIJob had finished and Kueue released its quota.
    first_done = at(conditions(mpijob(first))["Succeeded"])
    assert at(conditions(workloads[first])["Finished"]) <= admitted_at[second], workloads[first]["status"]
    assert first_done <= admitted_at[second], (first_done, admitted_at[second])
    resumed = at(conditions(mpijob(second))["Suspended"])  # mpi-operator's: False once Kueue unsuspended it
    assert conditions(mpijob(second))["Suspended"]["status"] == "False"
    assert first_done <= resumed
    # ... and the operator reported it Queued all that while, then Admitted after the wait.
    for name in NAMES:
        queued = conditions(done[name])["Queued"]
        assert (queued["status"], queued["reason"]) == ("False", "Admitted"), queued
    assert at(conditions(done[second])["Queued"]) >= first_done

    # Kueue said why the second waited: the first held the quota (its scheduler's Pending events).
    waiting = {name: [e for e in events(cluster, "Workload", workloads[name]["metadata"]["name"])
                      if e["reason"] == "Pending" and QUOTA_SHORT in e["message"]] for name in NAMES}
    assert waiting[second] and not waiting[first], waiting
    assert all(admitted_at[first] <= event_time(e) <= admitted_at[second] for e in waiting[second]), waiting[second]

    for name in NAMES:
        admission = workloads[name]["status"]["admission"]
        assert admission["clusterQueue"] == CLUSTER_QUEUE
        flavors = {a["name"]: a.get("flavors", {}) for a in admission["podSetAssignments"]}
        assert flavors["worker"] == {"nvidia.com/gpu": FLAVOR}, admission  # the launcher asks for nothing
        workers = mpijob(name)["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
        assert workers["nodeSelector"]["agentpool"] == "gpu"  # the flavor's label, merged in by Kueue
        status = done[name]["status"]
        assert status["results"]["accuracy"] == pytest.approx(lanex.recorded_results["accuracy"]), status


def test_an_experiment_naming_a_local_queue_that_does_not_exist_waits_in_preflight(kueue_queues):
    # Real Kueue would keep its MPIJob suspended for ever ("LocalQueue ... doesn't exist"): the
    # operator names the queue instead and creates nothing until it exists.
    lanex = kueue_queues
    spec = experiment("kq-typo")
    spec["spec"]["scheduler"]["queueName"] = "lane"
    lanex.apply(spec)

    def preflight() -> dict[str, Any] | None:
        found = conditions(lanex.cluster.get("lx", "kq-typo", "-n", NAMESPACE)).get("Preflight")
        return found if found and found["status"] == "False" else None

    problem = lanex.wait_for("the Preflight condition", preflight, timeout=WAIT_S, namespace=NAMESPACE)
    assert problem["reason"] == "MissingLocalQueue", problem
    assert 'Kueue LocalQueue "lane" (spec.scheduler.queueName) not found' in problem["message"]
    assert lanex.cluster.get("pvc,job,mpijob", "-n", NAMESPACE, "-l", "lanex.dev/experiment=kq-typo")["items"] == []
