"""Deleting a LaneExperiment honours `retention`, and never deletes a snapshot that a PVC restores from.

Also: a spec change after training started is reported and not applied.
"""

from __future__ import annotations

import pytest

from k8s.scenarios import children, condition, experiment, experiment_events, get_experiment, wait_phase

pytestmark = pytest.mark.timeout(60)


def gone(api_server, plural: str, name: str, namespace: str = "default") -> bool:
    return api_server.get(plural, name, namespace) is None


def test_deletion_keeps_or_deletes_storage_as_retention_says(api_server, running_operator):
    api_server.create(experiment("keep-all"))
    api_server.create(experiment("drop-all", spec={"retention": {"dataset": "Delete", "snapshots": "Delete"}}))
    kept = wait_phase(api_server, "keep-all", ["Succeeded"])
    dropped = wait_phase(api_server, "drop-all", ["Succeeded"])
    kept_snapshot = kept["status"]["provenance"]["resultSnapshot"]
    dropped_snapshot = dropped["status"]["provenance"]["resultSnapshot"]
    assert [ref["uid"] for ref in api_server.get("persistentvolumeclaims", "drop-all-data", "default")
            ["metadata"]["ownerReferences"]] == [dropped["metadata"]["uid"]]

    api_server.delete("laneexperiments", "keep-all", "default")
    api_server.delete("laneexperiments", "drop-all", "default")
    api_server.wait_for(lambda: gone(api_server, "laneexperiments", "keep-all")
                        and gone(api_server, "laneexperiments", "drop-all"), message="the finalizer to be released")
    api_server.wait_for(lambda: all(gone(api_server, plural, f"{exp}-{suffix}")
                                    for exp in ("keep-all", "drop-all")
                                    for plural, suffix in (("jobs", "prepare"), ("mpijobs", "train"))),
                        message="owned Jobs and MPIJobs to be garbage-collected")
    api_server.wait_for(lambda: gone(api_server, "persistentvolumeclaims", "drop-all-data"))
    assert gone(api_server, "volumesnapshots", dropped_snapshot)
    assert not gone(api_server, "persistentvolumeclaims", "keep-all-data")
    assert not gone(api_server, "volumesnapshots", kept_snapshot)
    assert children(api_server, "keep-all")["volumesnapshots"][0]["metadata"]["name"] == kept_snapshot
    api_server.wait_for(lambda: any(e["reason"] == "Deleted" and "kept PersistentVolumeClaim keep-all-data" in e["message"]
                                    for e in experiment_events(api_server, "keep-all")))


def test_snapshot_used_as_a_restore_source_survives_delete_retention(api_server, running_operator):
    api_server.create(experiment("source", spec={"retention": {"snapshots": "Delete"}}))
    snapshot = wait_phase(api_server, "source", ["Succeeded"])["status"]["provenance"]["resultSnapshot"]
    api_server.create(experiment("reuse", spec={"dataset": {"synthetic": None,
                                                            "fromSnapshot": {"snapshotName": snapshot}}}))
    wait_phase(api_server, "reuse", ["Succeeded"])

    api_server.delete("laneexperiments", "source", "default")
    api_server.wait_for(lambda: gone(api_server, "laneexperiments", "source"))
    assert not gone(api_server, "volumesnapshots", snapshot)
    api_server.wait_for(lambda: any(f"VolumeSnapshot {snapshot} (dataSource of PersistentVolumeClaim reuse-data)"
                                    in e["message"] for e in experiment_events(api_server, "source")
                                    if e["reason"] == "Deleted"))


def test_spec_change_after_training_started_is_reported_and_not_applied(api_server, running_operator):
    api_server.knobs.paused.add("MPIJob/edited")
    api_server.create(experiment("edited", spec={"training": {"workers": 2}}))
    wait_phase(api_server, "edited", ["Training"])
    api_server.wait_for(lambda: children(api_server, "edited")["mpijobs"])
    api_server.patch("laneexperiments", "edited", {"spec": {"training": {"workers": 8}}}, namespace="default")
    api_server.wait_for(lambda: any(c["type"] == "SpecChangeIgnored"
                                    for c in get_experiment(api_server, "edited")["status"]["conditions"]))
    api_server.knobs.paused.clear()
    exp = wait_phase(api_server, "edited", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded"
    assert exp["metadata"]["generation"] == 2 and exp["status"]["observedGeneration"] == 2
    ignored = condition(exp, "SpecChangeIgnored")
    assert ignored["status"] == "True" and ignored["reason"] == "TrainingStarted"
    assert "spec generation 2 was not applied: training started with generation 1" in ignored["message"]
    (mpijob,) = children(api_server, "edited")["mpijobs"]
    assert mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert exp["spec"]["training"]["workers"] == 8  # the operator never writes spec
