"""The cluster's defaults (the chart's `defaults.*` values) take effect for what an experiment leaves unset.

Scenarios: the operator reads LANEX_TRAINER_IMAGE and LANEX_DEFAULT_* once, with TR-4896's built-in
fallbacks and errors naming the variable; started with a site's defaults, the real operator creates
the children with that trainer image, storage class, snapshot class and scheduler, records the image
in status.provenance, reports a missing default class as the operator's default (not as a spec
field), keeps what a spec names, and fails an experiment that the default runai scheduler cannot place.
"""

from __future__ import annotations

import pytest

from k8s.scenarios import children, condition, experiment, get_experiment, wait_phase
from lanex_operator.plan.defaults import ClusterDefaults

pytestmark = pytest.mark.timeout(60)

SITE_IMAGE = "registry.example.com/lanex/trainer:0.2.0"
SITE_ENV = {
    "LANEX_TRAINER_IMAGE": SITE_IMAGE,
    "LANEX_DEFAULT_STORAGE_CLASS": "anf-premium",
    "LANEX_DEFAULT_SNAPSHOT_CLASS": "netapp-csi-snapclass",
    "LANEX_DEFAULT_SCHEDULER": "runai",
}


def test_defaults_come_from_the_environment_with_tr4896_fallbacks():
    assert ClusterDefaults.from_env({}) == ClusterDefaults(
        trainer_image="ghcr.io/lanex/trainer:0.1.0", storage_class_name="azurenetappfiles",
        volume_snapshot_class_name="netapp-csi-snapclass", scheduler="kubeflow")
    assert ClusterDefaults.from_env({"LANEX_TRAINER_IMAGE": "", "LANEX_DEFAULT_SCHEDULER": " "}) == ClusterDefaults()
    assert ClusterDefaults.from_env(SITE_ENV) == ClusterDefaults(
        trainer_image=SITE_IMAGE, storage_class_name="anf-premium",
        volume_snapshot_class_name="netapp-csi-snapclass", scheduler="runai")


@pytest.mark.parametrize("variable,value,expected", [
    ("LANEX_DEFAULT_SCHEDULER", "slurm", "LANEX_DEFAULT_SCHEDULER='slurm': must be one of kubeflow, runai"),
    ("LANEX_DEFAULT_STORAGE_CLASS", "Azure_NetApp", "LANEX_DEFAULT_STORAGE_CLASS='Azure_NetApp': must be a DNS"),
    ("LANEX_DEFAULT_SNAPSHOT_CLASS", "x" * 254, "LANEX_DEFAULT_SNAPSHOT_CLASS="),
    ("LANEX_TRAINER_IMAGE", "ghcr.io/lanex/trainer 0.1", "LANEX_TRAINER_IMAGE='ghcr.io/lanex/trainer 0.1': must be"),
])
def test_a_wrong_default_names_its_variable(variable, value, expected):
    with pytest.raises(ValueError) as caught:
        ClusterDefaults.from_env({variable: value})
    assert str(caught.value).startswith(expected)


def test_operator_started_with_site_defaults_uses_them_for_what_specs_leave_unset(api_server, operator_factory):
    operator_factory(SITE_ENV)
    api_server.create(experiment("site-a", namespace="runai-lanes"))  # names no image, classes or scheduler
    api_server.create(experiment("site-own", spec={"training": {"image": "mine/trainer:1"},
                                                   "dataset": {"storageClassName": "azurenetappfiles"},
                                                   "scheduler": {"type": "kubeflow"}}))
    api_server.create(experiment("site-lost", namespace="team-b"))  # default runai, but no project namespace

    # The default storage class does not exist yet: preflight names the operator's default, not the spec.
    def preflight() -> dict:
        exp = get_experiment(api_server, "site-a", "runai-lanes")
        return condition(exp, "Preflight") if (exp.get("status") or {}).get("conditions") else {}

    api_server.wait_for(lambda: preflight().get("status") == "False", message="site-a's Preflight condition")
    assert preflight()["message"] == ('storage class "anf-premium" (spec.dataset.storageClassName unset: the '
                                      "operator's default LANEX_DEFAULT_STORAGE_CLASS) not found")
    api_server.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "anf-premium"},
                       "provisioner": "csi.trident.netapp.io"})

    exp = wait_phase(api_server, "site-a", ["Succeeded", "Failed"], namespace="runai-lanes")
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    # spec never written (the API server's CRD defaults fill `scheduler: {}`, with no type)
    assert exp["spec"]["training"].get("image") is None and exp["spec"].get("scheduler", {}) == {}
    assert exp["status"]["provenance"]["trainerImage"] == SITE_IMAGE
    kids = children(api_server, "site-a", "runai-lanes")
    (mpijob,) = kids["mpijobs"]
    assert mpijob["metadata"]["labels"]["project"] == "lanes"  # the RUN:ai project of namespace runai-lanes
    for replica in mpijob["spec"]["mpiReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == SITE_IMAGE
        assert replica["template"]["spec"]["schedulerName"] == "runai-scheduler"
    assert kids["jobs"][0]["spec"]["template"]["spec"]["containers"][0]["image"] == SITE_IMAGE
    assert kids["persistentvolumeclaims"][0]["spec"]["storageClassName"] == "anf-premium"
    assert kids["volumesnapshots"][0]["spec"]["volumeSnapshotClassName"] == "netapp-csi-snapclass"

    own = wait_phase(api_server, "site-own", ["Succeeded", "Failed"])
    assert own["status"]["phase"] == "Succeeded", own["status"]
    assert own["status"]["provenance"]["trainerImage"] == "mine/trainer:1"
    own_kids = children(api_server, "site-own")
    worker = own_kids["mpijobs"][0]["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert "schedulerName" not in worker and worker["containers"][0]["image"] == "mine/trainer:1"
    assert own_kids["persistentvolumeclaims"][0]["spec"]["storageClassName"] == "azurenetappfiles"

    lost = wait_phase(api_server, "site-lost", ["Succeeded", "Failed"], namespace="team-b")
    assert (lost["status"]["phase"], lost["status"]["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.scheduler.type: unset, and the operator's default scheduler (LANEX_DEFAULT_SCHEDULER) is runai" in (
        lost["status"]["message"])
    assert all(not items for items in children(api_server, "site-lost", "team-b").values())


def test_operator_without_site_defaults_runs_tr4896s_setup(api_server, running_operator):
    api_server.create(experiment("plain"))
    exp = wait_phase(api_server, "plain", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert exp["status"]["provenance"]["trainerImage"] == "ghcr.io/lanex/trainer:0.1.0"
    (mpijob,) = children(api_server, "plain")["mpijobs"]
    assert mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/lanex/trainer:0.1.0")
    assert children(api_server, "plain")["persistentvolumeclaims"][0]["spec"]["storageClassName"] == "azurenetappfiles"
