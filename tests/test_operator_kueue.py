"""Kueue: an experiment with `scheduler.type: kueue` queues its MPIJob and trains once Kueue admits it.

Kueue (kubernetes-sigs/kueue, pkg/controller/jobs/mpijob) manages an MPIJob labelled
`kueue.x-k8s.io/queue-name` that is created with `spec.runPolicy.suspend: true`; it admits the job by
setting suspend to false (and merging the assigned flavor's nodeSelector into the pod templates).
mpi-operator creates no pods while the MPIJob is suspended. Here the test plays Kueue's admission.
"""

from __future__ import annotations

import re

import pytest

from k8s.scenarios import CHILD_PLURALS, child_counts, condition, experiment, get_experiment, wait_phase
from lanex_operator.api.crd import validate_against_crd
from lanex_operator.api.models import InvalidSpecError, parse_spec

pytestmark = pytest.mark.timeout(90)

KUEUE = {"scheduler": {"type": "kueue", "queueName": "team-a-queue"}}
NO_CHILDREN = dict.fromkeys(CHILD_PLURALS, 0)


def local_queue(name: str = "team-a-queue", namespace: str = "default") -> dict:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": "gpus"}}


def queued_for(exp: dict) -> int:
    found = re.search(r"queued for (\d+)s", condition(exp, "Queued")["message"])
    assert found, condition(exp, "Queued")
    return int(found.group(1))


def test_kueue_experiment_waits_suspended_shows_queued_and_trains_once_admitted(api_server, operator_factory):
    operator_factory({"LANEX_OPERATOR_QUEUED_MESSAGE_SECONDS": "0.5"})
    api_server.create(local_queue())
    api_server.create(experiment("lanes-q", spec=KUEUE))

    mpijob = api_server.wait_for(lambda: api_server.get("mpijobs", "lanes-q-train", "default"), message="the MPIJob")
    assert mpijob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-queue"
    assert mpijob["spec"]["runPolicy"]["suspend"] is True
    for role in ("Launcher", "Worker"):  # only the job is queued: Kueue's pod integration must not gate its pods
        assert "kueue.x-k8s.io/queue-name" not in mpijob["spec"]["mpiReplicaSpecs"][role]["template"]["metadata"]["labels"]

    def queued() -> dict | None:
        exp = get_experiment(api_server, "lanes-q")
        found = [c for c in (exp.get("status") or {}).get("conditions") or [] if c["type"] == "Queued"]
        return exp if found and found[0]["status"] == "True" else None

    exp = api_server.wait_for(queued, message="the Queued condition")
    assert condition(exp, "Queued")["reason"] == "WaitingForAdmission"
    assert condition(exp, "Queued")["message"].startswith(
        "MPIJob lanes-q-train waits in Kueue LocalQueue team-a-queue for admission (queued for ")
    exp = api_server.wait_for(lambda: (lambda e: e if queued_for(e) >= 1 else None)(get_experiment(api_server, "lanes-q")),
                              message="the waiting time to move on")
    assert exp["status"]["phase"] == "Training"
    assert ("suspended", "lanes-q-train") in api_server.sim.history
    assert api_server.list("pods", "default", "training.kubeflow.org/job-name=lanes-q-train", api_version="v1") == []

    # Kueue's admission: unsuspend, with the flavor's node selector merged into the pod templates.
    api_server.patch("mpijobs", "lanes-q-train", {"spec": {"runPolicy": {"suspend": False}, "mpiReplicaSpecs": {
        role: {"template": {"spec": {"nodeSelector": {"kubernetes.azure.com/agentpool": "gpu"}}}}
        for role in ("Launcher", "Worker")}}}, namespace="default")
    done = wait_phase(api_server, "lanes-q", ["Succeeded", "Failed"], timeout=30)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    admitted = condition(done, "Queued")
    assert (admitted["status"], admitted["reason"]) == ("False", "Admitted")
    assert re.fullmatch(r"Kueue admitted MPIJob lanes-q-train from LocalQueue team-a-queue after \d+s",
                        admitted["message"])
    assert ("resumed", "lanes-q-train") in api_server.sim.history


def test_a_local_queue_that_does_not_exist_is_a_preflight_problem_until_it_is_created(api_server, running_operator):
    # Kueue keeps a job of a queue that does not exist suspended for ever: the experiment would show
    # Queued for ever. Preflight names the queue instead, and nothing is created until it exists.
    api_server.create(experiment("lanes-typo", spec={"scheduler": {"type": "kueue", "queueName": "team-a-qeue"}}))

    def preflight() -> dict:
        exp = get_experiment(api_server, "lanes-typo")
        found = [c for c in (exp.get("status") or {}).get("conditions") or [] if c["type"] == "Preflight"]
        return found[0] if found and found[0]["status"] == "False" else {}

    problem = api_server.wait_for(preflight, message="the Preflight condition")
    assert problem["reason"] == "MissingLocalQueue"
    assert problem["message"] == ('Kueue LocalQueue "team-a-qeue" (spec.scheduler.queueName) not found in namespace '
                                  '"default": create it for a ClusterQueue, or name an existing one')
    assert get_experiment(api_server, "lanes-typo")["status"]["phase"] == "Pending"
    assert child_counts(api_server, "lanes-typo") == NO_CHILDREN

    api_server.create(local_queue("team-a-qeue"))
    api_server.wait_for(lambda: api_server.get("mpijobs", "lanes-typo-train", "default"), timeout=30,
                        message="the MPIJob, once the LocalQueue exists")
    assert condition(get_experiment(api_server, "lanes-typo"), "Preflight")["status"] == "True"


def test_without_kueue_a_kueue_experiment_is_a_preflight_problem(api_server, operator_factory):
    api_server.call(api_server.emulator.unregister, "kueue.x-k8s.io", "v1beta2", "localqueues")
    operator_factory()
    api_server.create(experiment("lanes-nokueue", spec=KUEUE))
    problem = api_server.wait_for(
        lambda: [c for c in (get_experiment(api_server, "lanes-nokueue").get("status") or {}).get("conditions") or []
                 if c["type"] == "Preflight" and c["status"] == "False"], message="the Preflight condition")[0]
    assert problem["reason"] == "MissingKueueAPI"
    assert "the kueue.x-k8s.io LocalQueue API is not served: install Kueue" in problem["message"]
    assert child_counts(api_server, "lanes-nokueue") == NO_CHILDREN


@pytest.mark.parametrize("scheduler,problem", [
    ({"type": "kueue"}, "spec.scheduler.queueName: required when scheduler type is kueue"),
    ({"type": "kubeflow", "queueName": "q"}, "spec.scheduler.queueName: only allowed when scheduler type is kueue"),
    ({"type": "kueue", "queueName": "Team_Q"}, "spec.scheduler.queueName: does not match the pattern"),
])
def test_a_kueue_scheduler_needs_exactly_a_valid_queue_name_in_the_models_and_the_crd(scheduler, problem):
    spec = {"dataset": {"synthetic": {}}, "scheduler": scheduler}
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(spec)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems
    document = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": "x"}, "spec": spec}
    assert validate_against_crd(document) != []
    assert validate_against_crd({**document, "spec": {**spec, "scheduler": KUEUE["scheduler"]}}) == []
