"""Kueue: an experiment with `scheduler.type: kueue` queues its MPIJob and trains once Kueue admits it.

Kueue (kubernetes-sigs/kueue, pkg/controller/jobs/mpijob) manages an MPIJob labelled
`kueue.x-k8s.io/queue-name` that is created with `spec.runPolicy.suspend: true`; it admits the job by
setting suspend to false (and merging the assigned flavor's nodeSelector into the pod templates).
mpi-operator creates no pods while the MPIJob is suspended. Here the test plays Kueue's admission.
"""

from __future__ import annotations

import re

import pytest

from k8s.scenarios import condition, experiment, get_experiment, wait_phase
from lanex_operator.api.crd import validate_against_crd
from lanex_operator.api.models import InvalidSpecError, parse_spec

pytestmark = pytest.mark.timeout(90)

KUEUE = {"scheduler": {"type": "kueue", "queueName": "team-a-queue"}}


def queued_for(exp: dict) -> int:
    found = re.search(r"queued for (\d+)s", condition(exp, "Queued")["message"])
    assert found, condition(exp, "Queued")
    return int(found.group(1))


def test_kueue_experiment_waits_suspended_shows_queued_and_trains_once_admitted(api_server, operator_factory):
    operator_factory({"LANEX_OPERATOR_QUEUED_MESSAGE_SECONDS": "0.5"})
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
