"""The operator survives what production does to it: SIGKILL in any phase, and a flaky API server.

Either way every experiment completes with exactly one of each child and loses nothing from status.
"""

from __future__ import annotations

import time

import pytest

from k8s.emulator import FaultPlan
from k8s.scenarios import child_counts, condition, experiment, phase_of, wait_phase

pytestmark = pytest.mark.timeout(90)

ONE_OF_EACH = {"persistentvolumeclaims": 1, "jobs": 1, "mpijobs": 1, "volumesnapshots": 1}


def assert_complete(api_server, name: str, namespace: str = "default") -> None:
    exp = wait_phase(api_server, name, ["Succeeded", "Failed"], namespace=namespace, timeout=30)
    status = exp["status"]
    assert status["phase"] == "Succeeded", (name, status)
    assert child_counts(api_server, name, namespace) == ONE_OF_EACH, name
    assert status["results"]["accuracy"] == pytest.approx(0.9512)
    (record,) = status["snapshots"]
    assert record["readyToUse"] is True and record["contentName"].startswith("snapcontent-")
    assert status["children"]["snapshots"] == [record["name"]]
    assert status["provenance"]["resultSnapshot"] == record["name"]
    for type_ in ("Preflight", "DatasetReady", "DataPrepared", "VolumeShared", "Trained", "Snapshotted"):
        assert condition(exp, type_)["status"] == "True", (name, type_)
    assert len(api_server.list("persistentvolumes")) >= 1


def test_operator_killed_in_every_phase_completes_each_experiment_once(api_server, operator_factory):
    knobs = api_server.knobs
    knobs.paused |= {"MPIJob/r-train", "VolumeSnapshot/r-snap", "PersistentVolumeClaim/r-dataset", "Job/r-download"}
    operator = operator_factory()

    api_server.create(experiment("r-train"))
    api_server.create(experiment("r-snap"))
    wait_phase(api_server, "r-train", ["Training"])
    wait_phase(api_server, "r-snap", ["Snapshotting"])
    # The PV patch keeps failing with 500 so that r-share sits in SharingVolume.
    api_server.set_faults(FaultPlan(error_rate=1.0, applies=lambda call: call.resource == "persistentvolumes"
                                    and call.method == "PATCH"))
    api_server.create(experiment("r-share"))
    api_server.create(experiment("r-pending", spec={"dataset": {"storageClassName": "late-class"}}))
    api_server.create(experiment("r-dataset"))
    api_server.create(experiment("r-download"))
    expected = {"r-pending": "Pending", "r-dataset": "ProvisioningDataset", "r-download": "Downloading",
                "r-share": "SharingVolume", "r-train": "Training", "r-snap": "Snapshotting"}
    for name, phase in expected.items():
        wait_phase(api_server, name, [phase])
    time.sleep(0.3)  # let each one write whatever it writes in that phase

    operator.kill()
    api_server.set_faults(None)
    operator.start()
    time.sleep(0.6)  # resumed while the cluster still holds every step: nothing may be created twice
    held = {name: phase for name, phase in expected.items() if name != "r-share"}  # r-share's faults are gone
    assert {name: phase_of(api_server, name) for name in held} == held
    assert child_counts(api_server, "r-snap") == ONE_OF_EACH
    assert child_counts(api_server, "r-train")["mpijobs"] == 1

    knobs.paused.clear()
    api_server.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "late-class"},
                       "provisioner": "csi.trident.netapp.io"})
    time.sleep(0.15)
    operator.kill()  # once more, in the middle of everything moving at once
    operator.start()
    for name in expected:
        assert_complete(api_server, name)


def test_flaky_api_server_with_errors_conflicts_and_slow_answers_loses_nothing(api_server, operator_factory):
    plan = FaultPlan(error_rate=0.08, conflict_rate=0.08, slow_rate=0.1, slow_seconds=0.3, seed=4896)
    api_server.set_faults(plan)
    operator_factory()
    names = ["flaky-a", "flaky-b", "flaky-c"]
    for name in names:
        api_server.create(experiment(name))
    for name in names:
        assert_complete(api_server, name)
    assert plan.injected["error"] > 0 and plan.injected["conflict"] > 0 and plan.injected["slow"] > 0, plan.injected
