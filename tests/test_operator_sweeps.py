"""LaneSweeps on the emulated cluster with the real operator: the dataset once, one snapshot, a restored
clone per trial, parallelism, early stopping by the median rule, the best trial, restarts in every phase,
retention of the best N and deletion."""

from __future__ import annotations

from typing import Any

import pytest

from k8s.scenarios import condition, deep_merge

pytestmark = pytest.mark.timeout(240)

SWEEP_LABEL = "lanex.dev/sweep"


def sweep(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    base = {
        "template": {"dataset": {"synthetic": {"clips": 4, "seed": 7}},
                     "training": {"workers": 1, "epochs": 4, "backbone": "small"}},
        "parameters": [{"path": "learningRate", "values": [0.01, 0.02, 0.04]}],
        "parallelism": 1,
    }
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": name, "namespace": "default"},
            "spec": deep_merge(base, spec or {})}


def sweep_status(cluster, name: str) -> dict[str, Any]:
    return (cluster.get("lanesweeps", name, "default") or {}).get("status") or {}


def wait_sweep(cluster, name: str, phases=("Succeeded", "Failed"), timeout: float = 120) -> dict[str, Any]:
    cluster.wait_for(lambda: sweep_status(cluster, name).get("phase") in phases, timeout=timeout,
                     message=f"sweep {name} to reach {phases} (status: {sweep_status(cluster, name)})")
    return cluster.get("lanesweeps", name, "default")


def trials(cluster, name: str) -> list[dict[str, Any]]:
    return sorted(cluster.list("laneexperiments", "default", label_selector=f"{SWEEP_LABEL}={name}"),
                  key=lambda t: t["metadata"]["name"])


def restores_of(cluster, snapshot: str) -> list[str]:
    return sorted(c["metadata"]["name"] for c in cluster.list("persistentvolumeclaims", "default")
                  if ((c.get("spec") or {}).get("dataSource") or {}).get("name") == snapshot)


def sweep_events(cluster, name: str) -> list[str]:
    return [e["reason"] for e in sorted(cluster.list("events", "default", api_version="v1"),
                                        key=lambda e: int(e["metadata"]["resourceVersion"]))
            if (e.get("involvedObject") or {}).get("kind") == "LaneSweep" and e["involvedObject"]["name"] == name]


def test_six_trials_two_at_a_time_share_one_prepared_snapshot_and_the_laggard_is_stopped(api_server, operator_factory):
    knobs = api_server.knobs
    knobs.steps_per_epoch, knobs.step_seconds = 2, 0.1
    knobs.val_accuracy["sw-003"] = [0.2, 0.25, 0.3, 0.35]  # held below the others' climb (0.61, 0.73, ...)
    knobs.paused.add("MPIJob.running/sw-003")  # held midway (after epoch 2) until it is stopped
    for index in range(6):
        knobs.results_for[f"sw-{index:03d}"] = {"accuracy": 0.90 + index / 100, "fp": 0.05, "fn": 0.04}
    operator_factory()
    api_server.create(sweep("sw", {"parameters": [{"path": "learningRate", "values": [0.01, 0.02, 0.04]},
                                                  {"path": "batchSize", "values": [4, 8]}],
                                   "parallelism": 2, "earlyStopping": {"minEpochs": 2, "minTrials": 2}}))
    done = wait_sweep(api_server, "sw")
    status = done["status"]
    assert status["phase"] == "Succeeded", status

    # the dataset: one prepare Job, one snapshot, one restored clone per trial
    assert [j["metadata"]["name"] for j in api_server.list("jobs", "default")] == ["sw-dataset-prepare"]
    assert [s["metadata"]["name"] for s in api_server.list("volumesnapshots", "default")
            if s["metadata"]["name"].startswith("sw-dataset")] == ["sw-dataset"]
    assert status["datasetSnapshot"] == "sw-dataset" and condition(done, "DatasetReady")["status"] == "True"
    names = [f"sw-{i:03d}" for i in range(6)]
    assert restores_of(api_server, "sw-dataset") == [f"{n}-data" for n in names]

    # trials: LaneExperiments owned by the sweep, labelled, never more than 2 training at once
    found = trials(api_server, "sw")
    assert [t["metadata"]["name"] for t in found] == names
    assert all(t["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"] for t in found)
    assert all(t["spec"]["dataset"]["fromSnapshot"] == {"snapshotName": "sw-dataset"} for t in found)
    assert [t["spec"]["training"]["learningRate"] for t in found] == [0.01, 0.01, 0.02, 0.02, 0.04, 0.04]
    assert api_server.sim.mpijobs_running_peak["default"] == 2

    # early stopping: the held trial, below the median at epoch 2, lost its MPIJob and is Stopped
    stopped = next(t for t in found if t["metadata"]["name"] == "sw-003")
    assert (stopped["status"]["phase"], stopped["status"]["reason"]) == ("Stopped", "EarlyStopped")
    assert "worse than the median" in stopped["status"]["message"]
    assert api_server.get("mpijobs", "sw-003-train", "default") is None
    rows = {row["name"]: row for row in status["trials"]}
    assert (rows["sw-003"]["phase"], rows["sw-003"]["reason"]) == ("Stopped", "EarlyStopped")
    assert status["counts"] == {"pending": 0, "running": 0, "succeeded": 5, "failed": 0, "stopped": 1}

    # the best trial by test accuracy
    assert status["bestTrial"]["name"] == "sw-005"
    assert status["bestTrial"]["parameters"] == {"learningRate": 0.04, "batchSize": 8}
    assert status["bestTrial"]["objective"] == pytest.approx(0.95)
    assert status["bestTrial"]["snapshot"] == rows["sw-005"]["snapshot"]
    # Events are posted after the status write that decided them: wait for the last one.
    events = api_server.wait_for(lambda: (lambda found: found if "Succeeded" in found else None)(
        sweep_events(api_server, "sw")), message="the sweep's Succeeded Event")
    assert events[:2] == ["Pending", "PreparingDataset"]
    assert {"DatasetReady", "Running", "TrialsCreated", "TrialStopped", "Succeeded"} <= set(events)
    assert api_server.sim.errors == []


def test_a_restart_in_every_sweep_phase_creates_each_child_exactly_once(api_server, operator_factory):
    knobs = api_server.knobs
    operator = operator_factory()
    holds = ["Job/rs-dataset-prepare", "VolumeSnapshot/rs-dataset", "MPIJob/rs-001"]
    knobs.paused.update(holds)
    api_server.create(sweep("rs"))
    waits = [
        lambda: api_server.get("jobs", "rs-dataset-prepare", "default"),
        lambda: api_server.get("volumesnapshots", "rs-dataset", "default"),
        lambda: api_server.get("mpijobs", "rs-001-train", "default"),
    ]
    for hold, appeared in zip(holds, waits):
        api_server.wait_for(appeared, timeout=60, message=f"the child held by {hold}")
        operator.kill()  # SIGKILL mid-phase: whatever it did not write is lost
        operator.start()
        knobs.paused.discard(hold)
    done = wait_sweep(api_server, "rs")
    assert done["status"]["phase"] == "Succeeded"
    operator.kill()
    operator.start()  # a finished sweep stays as it is
    assert len(api_server.list("jobs", "default")) == 1
    assert [s["metadata"]["name"] for s in api_server.list("volumesnapshots", "default")
            if s["metadata"]["name"].startswith("rs-dataset")] == ["rs-dataset"]
    assert [t["metadata"]["name"] for t in trials(api_server, "rs")] == ["rs-000", "rs-001", "rs-002"]
    assert restores_of(api_server, "rs-dataset") == ["rs-000-data", "rs-001-data", "rs-002-data"]
    assert len(api_server.list("mpijobs", "default")) == 3
    assert sweep_status(api_server, "rs")["phase"] == "Succeeded"


def test_retention_keeps_the_best_trial_and_deleting_the_sweep_releases_its_dataset(api_server, operator_factory):
    knobs = api_server.knobs
    for index, accuracy in enumerate((0.91, 0.97, 0.93)):
        knobs.results_for[f"rt-{index:03d}"] = {"accuracy": accuracy, "fp": 0.05, "fn": 0.04}
    operator_factory()
    api_server.create(sweep("rt", {"parallelism": 3, "retention": {"keepBest": 1, "dataset": "Delete"}}))
    api_server.create(sweep("bad", {"parameters": [{"path": "learningRate", "values": [0.1, 50]}]}))
    done = wait_sweep(api_server, "rt")
    status = done["status"]
    assert status["bestTrial"]["name"] == "rt-001"
    api_server.wait_for(lambda: [t["metadata"]["name"] for t in trials(api_server, "rt")] == ["rt-001"], timeout=30,
                        message="the trials outside the best 1 to be deleted")
    api_server.wait_for(lambda: restores_of(api_server, "rt-dataset") == ["rt-001-data"], timeout=30,
                        message="the deleted trials' volumes to go")
    trial_snapshots = [s["metadata"]["name"] for s in api_server.list("volumesnapshots", "default")
                       if s["metadata"]["name"].startswith("rt-00")]
    assert [s.rsplit("-", 1)[0] for s in trial_snapshots] == ["rt-001"]
    rows = {row["name"]: row for row in status["trials"]}
    assert rows["rt-000"]["deleted"] is True and rows["rt-002"]["deleted"] is True and "deleted" not in rows["rt-001"]
    api_server.wait_for(lambda: "TrialsDeleted" in sweep_events(api_server, "rt"), message="a TrialsDeleted Event")

    bad = wait_sweep(api_server, "bad")["status"]
    assert (bad["phase"], bad["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.parameters[0] (learningRate): value 50 is rejected" in bad["message"]
    assert trials(api_server, "bad") == []

    api_server.delete("lanesweeps", "rt", "default")
    api_server.wait_for(lambda: api_server.get("lanesweeps", "rt", "default") is None
                        and api_server.get("volumesnapshots", "rt-dataset", "default") is None
                        and api_server.get("persistentvolumeclaims", "rt-dataset-data", "default") is None
                        and not trials(api_server, "rt"), timeout=30,
                        message="the sweep, its trials, its dataset claim and snapshot to be gone")


def test_a_flaky_api_server_with_errors_conflicts_and_slow_answers_loses_nothing(api_server, operator_factory):
    from k8s.emulator import FaultPlan

    plan = FaultPlan(error_rate=0.08, conflict_rate=0.08, slow_rate=0.1, slow_seconds=0.3, seed=14)
    api_server.set_faults(plan)
    operator_factory()
    api_server.create(sweep("fl", {"parallelism": 2}))
    done = wait_sweep(api_server, "fl", timeout=180)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert [j["metadata"]["name"] for j in api_server.list("jobs", "default")] == ["fl-dataset-prepare"]
    assert [t["metadata"]["name"] for t in trials(api_server, "fl")] == ["fl-000", "fl-001", "fl-002"]
    assert restores_of(api_server, "fl-dataset") == ["fl-000-data", "fl-001-data", "fl-002-data"]
    assert done["status"]["counts"]["succeeded"] == 3
    assert plan.injected["error"] > 0 and plan.injected["conflict"] > 0 and plan.injected["slow"] > 0, plan.injected


# --- nothing a sweep holds loops forever: it ends in a condition and a Warning Event ----------------


def sweep_warnings(cluster, name: str) -> list[dict[str, Any]]:
    return [e for e in cluster.list("events", "default", api_version="v1") if e["type"] == "Warning"
            and (e.get("involvedObject") or {}).get("kind") == "LaneSweep" and e["involvedObject"]["name"] == name]


def sweep_writes(cluster, name: str) -> int:
    return len([c for c in cluster.calls() if c.resource.startswith("lanesweeps") and c.name == name
                and c.verb == "patch" and c.user_agent.startswith("lanex-operator/")])


def test_a_sweep_named_with_a_leading_digit_fails_as_invalid_once_instead_of_restarting_forever(api_server,
                                                                                              running_operator):
    # Written straight into the store, as if created before the CRD had its name rule: its trials (3lr-000) and
    # its dataset (3lr-dataset) cannot be named. The API server now refuses even its status (the CEL rule on
    # metadata.name), so what is left is one Warning Event with the reason, and no pass after it.
    api_server.create(sweep("3lr"))
    warnings = api_server.wait_for(lambda: sweep_warnings(api_server, "3lr"), timeout=30, message="a Warning Event")
    assert [e["reason"] for e in warnings] == ["InvalidSpec"]
    message = warnings[0]["message"]
    assert message.startswith("invalid name: metadata.name: must be a DNS-1035 label"), message
    assert "'3lr'" in message and "(the status could not be written: 422 Invalid" in message
    writes = sweep_writes(api_server, "3lr")
    import time

    time.sleep(3)  # a daemon restarted by kopf would try again within its backoff
    assert sweep_writes(api_server, "3lr") == writes
    assert [e["reason"] for e in sweep_warnings(api_server, "3lr")] == ["InvalidSpec"]
    assert not trials(api_server, "3lr") and not api_server.list("jobs", "default")
    assert not api_server.list("persistentvolumeclaims", "default")


def test_an_unexpected_error_in_a_sweep_pass_ends_it_with_a_condition_and_one_warning(api_server, operator_factory):
    # A status no model foresaw (a trials row that is not a mapping, written past the schema): the pass raises
    # AttributeError, which kopf would otherwise retry forever with its backoff.
    api_server.create(sweep("odd"))
    api_server.patch("lanesweeps", "odd", {"status": {
        "phase": "Running", "datasetSnapshot": "odd-dataset", "trials": [7],
        "conditions": [{"type": "DatasetReady", "status": "True", "reason": "Snapshotted", "message": "ready",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}, "default", status=True)
    operator_factory()
    done = wait_sweep(api_server, "odd", timeout=30)
    status = done["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ReconcileError"), status
    assert "the operator cannot handle this sweep (AttributeError" in status["message"]
    assert condition(done, "Failed")["reason"] == "ReconcileError"
    api_server.wait_for(lambda: [e["reason"] for e in sweep_warnings(api_server, "odd")] == ["ReconcileError"],
                        message="one ReconcileError Warning")
    import time

    time.sleep(2)
    assert [e["reason"] for e in sweep_warnings(api_server, "odd")] == ["ReconcileError"]
    assert not trials(api_server, "odd")


def test_a_sweeps_dataset_step_shows_stuck_prepare_pods_and_the_provisioners_warning_then_fails(api_server,
                                                                                              operator_factory):
    knobs = api_server.knobs
    knobs.stuck_pods["sp-dataset-prepare"] = ("ImagePullBackOff", 'Back-off pulling image "ghcr.io/lanex/trainer:typo"')
    knobs.fail_binding["sb-dataset-data"] = "ANF capacity pool premium-pool has no space left"
    operator_factory({"LANEX_OPERATOR_STUCK_CHECK_SECONDS": "0.2", "LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS": "6",
                      "LANEX_OPERATOR_DATASET_BOUND_TIMEOUT_SECONDS": "6"})
    api_server.create(sweep("sp"))
    api_server.create(sweep("sb"))

    def shown(name: str, reason: str):
        status = sweep_status(api_server, name)
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "DatasetReady"), {})
        return ready if ready.get("reason") == reason and status.get("phase") != "Failed" else None

    stuck = api_server.wait_for(lambda: shown("sp", "ImagePullBackOff"), message="DatasetReady of sp: ImagePullBackOff")
    assert stuck["status"] == "Unknown" and stuck["message"].startswith("Job sp-dataset-prepare: pod sp-dataset-prepare-")
    assert 'Back-off pulling image "ghcr.io/lanex/trainer:typo"' in stuck["message"]
    pending = api_server.wait_for(lambda: shown("sb", "ProvisioningFailed"), message="DatasetReady of sb: ProvisioningFailed")
    assert pending["message"] == ("PersistentVolumeClaim sb-dataset-data is Pending: ProvisioningFailed: "
                                  "ANF capacity pool premium-pool has no space left")
    for name, says in (("sp", "was ImagePullBackOff for "), ("sb", "ProvisioningFailed: ANF capacity pool")):
        status = wait_sweep(api_server, name)["status"]
        assert (status["phase"], status["reason"]) == ("Failed", "DatasetFailed")
        assert says in status["message"]
        assert trials(api_server, name) == []
    api_server.wait_for(lambda: {"ImagePullBackOff", "DatasetFailed"} <= set(sweep_events(api_server, "sp")),
                        message="the sweep's Warning Events")
