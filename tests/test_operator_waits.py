"""Nothing waits forever: every wait of the lifecycle shows what it waits on and ends after a bound.

The real operator against the emulated cluster, whose simulated controllers get stuck the way real
ones do: mpi-operator refuses an MPIJob with a `ValidationError` Event and no condition (or no
mpi-operator runs at all), the kubelet reports a container waiting reason, the scheduler
PodScheduled=False/Unschedulable, a CSI provisioner a `ProvisioningFailed` Event. Also: the
VolumeSnapshotClass of an existing claim follows its volume's CSI driver.
"""

from __future__ import annotations

import re

import pytest

from k8s.scenarios import child_counts, children, condition, experiment, get_experiment, wait_phase
from test_operator_failures import NO_CHILDREN, failed, warning_reasons

pytestmark = pytest.mark.timeout(90)

# Bounds short enough for a test, long enough that a loaded machine still sees the wait before it ends.
BOUNDS = {"LANEX_OPERATOR_STUCK_CHECK_SECONDS": "0.2", "LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS": "8",
          "LANEX_OPERATOR_MPIJOB_CONDITION_TIMEOUT_SECONDS": "6"}
NAME_ERROR = ('metadata.name: Invalid value: "3gpu-run-train": will not able to create pod and service with invalid '
              'DNS label "3gpu-run-train-worker-1": a DNS-1035 label must consist of lower case alphanumeric '
              "characters or '-', start with an alphabetic character, and end with an alphanumeric character")
AZURE_DISK = "disk.csi.azure.com"


def waiting_condition(api_server, name: str, type_: str, reason: str) -> dict:
    """The step's condition once it shows `reason` while the experiment still runs."""
    def shown():
        exp = get_experiment(api_server, name)
        found = next((c for c in (exp.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})
        return found if found.get("reason") == reason and exp["status"].get("phase") != "Failed" else None
    return api_server.wait_for(shown, message=f"{type_} of {name} to show {reason} before it fails")


def test_mpijob_refused_by_mpi_operator_fails_quoting_its_validation_error(api_server, operator_factory):
    api_server.knobs.refuse_mpijobs["lanes-refused"] = NAME_ERROR
    operator_factory(BOUNDS)
    api_server.create(experiment("lanes-refused"))
    shown = waiting_condition(api_server, "lanes-refused", "Trained", "ValidationError")  # at once, while it waits
    assert (shown["status"], shown["message"]) == (
        "Unknown", f"MPIJob lanes-refused-train has no condition: ValidationError: Found validation errors: {NAME_ERROR}")
    exp = failed(api_server, "lanes-refused")
    assert exp["status"]["reason"] == "TrainingFailed"
    message = exp["status"]["message"]
    assert "MPIJob lanes-refused-train was not started by its controller" in message
    assert "LANEX_OPERATOR_MPIJOB_CONDITION_TIMEOUT_SECONDS=6" in message
    assert f"ValidationError: Found validation errors: {NAME_ERROR}" in message
    assert (condition(exp, "Trained")["status"], condition(exp, "Trained")["reason"]) == ("False", "TrainingFailed")
    mpijob = api_server.get("mpijobs", "lanes-refused-train", "default")
    assert not (mpijob.get("status") or {}).get("conditions")  # refused: mpi-operator never set one
    assert api_server.list("pods", "default", label_selector="training.kubeflow.org/job-name=lanes-refused-train") == []
    events = [e for e in api_server.list("events", "default", api_version="v1")
              if e["involvedObject"] == {**e["involvedObject"], "kind": "MPIJob", "name": "lanes-refused-train"}]
    assert [(e["type"], e["reason"], e["source"]["component"]) for e in events] == [
        ("Warning", "ValidationError", "mpi-job-controller")]
    assert events[0]["involvedObject"]["uid"] == mpijob["metadata"]["uid"]


def test_mpijob_with_no_mpi_operator_fails_saying_none_may_be_running(api_server, operator_factory):
    api_server.knobs.mpi_operator_running = False
    operator_factory(BOUNDS)
    api_server.create(experiment("lanes-nompiop"))
    exp = failed(api_server, "lanes-nompiop")
    assert exp["status"]["reason"] == "TrainingFailed"
    message = exp["status"]["message"]
    assert "MPIJob lanes-nompiop-train has no condition" in message
    assert "after it was created (LANEX_OPERATOR_MPIJOB_CONDITION_TIMEOUT_SECONDS=6)" in message
    assert "the Kubeflow mpi-operator may not be running (or may not watch namespace default)" in message
    assert child_counts(api_server, "lanes-nompiop") == {**NO_CHILDREN, "persistentvolumeclaims": 1, "jobs": 1,
                                                         "mpijobs": 1}


POD_TROUBLES = {
    "ImagePullBackOff": 'Back-off pulling image "ghcr.io/lanex/trainer:0.1.0-typo"',
    "ErrImagePull": 'rpc error: code = NotFound desc = failed to pull and unpack image '
                    '"ghcr.io/lanex/trainer:0.1.0-typo": not found',
    "CreateContainerConfigError": 'secret "tusimple-credentials" not found',
    "Unschedulable": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
                     "available: 3 No preemption victims found for incoming pod.",
}


@pytest.mark.parametrize("reason", list(POD_TROUBLES))
def test_prepare_pod_that_cannot_start_shows_why_then_fails_the_download(api_server, operator_factory, reason):
    name = f"lanes-prep-{reason.lower()}"
    api_server.knobs.stuck_pods[name] = (reason, POD_TROUBLES[reason])
    operator_factory(BOUNDS)
    api_server.create(experiment(name))
    shown = waiting_condition(api_server, name, "DataPrepared", reason)
    assert shown["status"] == "Unknown"
    assert shown["message"].startswith(f"Job {name}-prepare: pod {name}-prepare-")
    assert f"is {reason}: " in shown["message"] and POD_TROUBLES[reason] in shown["message"]
    api_server.wait_for(lambda: reason in warning_reasons(api_server, name),  # posted after the status write
                        message=f"a Warning Event {reason} on the experiment")
    exp = failed(api_server, name)
    assert exp["status"]["reason"] == "DownloadFailed"
    assert f"was {reason} for " in exp["status"]["message"]
    assert "(LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS=8)" in exp["status"]["message"]
    assert POD_TROUBLES[reason] in exp["status"]["message"]
    assert condition(exp, "DataPrepared")["reason"] == "DownloadFailed"
    assert child_counts(api_server, name)["mpijobs"] == 0


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "Unschedulable"])
def test_training_pods_that_cannot_start_show_why_then_fail_the_training(api_server, operator_factory, reason):
    name = f"lanes-train-{reason.lower()}"
    api_server.knobs.stuck_pods[f"{name}-train"] = (reason, POD_TROUBLES[reason])  # the MPIJob's, not the Job's
    operator_factory(BOUNDS)
    api_server.create(experiment(name))
    shown = waiting_condition(api_server, name, "Trained", reason)
    assert shown["status"] == "Unknown"
    assert shown["message"].startswith(f"MPIJob {name}-train: pod {name}-train-")
    assert POD_TROUBLES[reason] in shown["message"]
    exp = failed(api_server, name)
    assert exp["status"]["reason"] == "TrainingFailed"
    assert f"MPIJob {name}-train: pod {name}-train-" in exp["status"]["message"]
    assert f"was {reason} for " in exp["status"]["message"] and POD_TROUBLES[reason] in exp["status"]["message"]
    assert child_counts(api_server, name)["volumesnapshots"] == 0


def test_training_pods_that_start_late_clear_the_reason_and_succeed(api_server, operator_factory):
    api_server.knobs.stuck_pods["lanes-late-train"] = ("Unschedulable", POD_TROUBLES["Unschedulable"])
    operator_factory({**BOUNDS, "LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS": "60"})
    api_server.create(experiment("lanes-late"))
    waiting_condition(api_server, "lanes-late", "Trained", "Unschedulable")
    del api_server.knobs.stuck_pods["lanes-late-train"]  # the autoscaler added a GPU node
    exp = wait_phase(api_server, "lanes-late", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert condition(exp, "Trained")["reason"] == "Succeeded"


def test_pending_claim_shows_the_provisioner_warning_then_fails(api_server, operator_factory):
    api_server.knobs.fail_binding["lanes-pending"] = "ANF capacity pool premium-pool has no space left"
    operator_factory({**BOUNDS, "LANEX_OPERATOR_DATASET_BOUND_TIMEOUT_SECONDS": "8"})
    api_server.create(experiment("lanes-pending"))
    shown = waiting_condition(api_server, "lanes-pending", "DatasetReady", "ProvisioningFailed")
    assert shown["status"] == "Unknown"
    assert shown["message"] == ("PersistentVolumeClaim lanes-pending-data is Pending: ProvisioningFailed: "
                                "ANF capacity pool premium-pool has no space left")
    api_server.wait_for(lambda: "ProvisioningFailed" in warning_reasons(api_server, "lanes-pending"))
    exp = failed(api_server, "lanes-pending")
    assert exp["status"]["reason"] == "DatasetFailed"
    assert "ProvisioningFailed: ANF capacity pool premium-pool has no space left" in exp["status"]["message"]


# --- the snapshot class of a claim lanex did not create ------------------------------------------


def azure_disk_claim(api_server, name: str) -> None:
    """A prepared claim of another CSI driver (Azure Disk), bound by its provisioner."""
    api_server.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "managed-csi"},
                       "provisioner": AZURE_DISK, "volumeBindingMode": "Immediate"})
    api_server.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": name, "namespace": "default", "annotations": {"lanex.dev/prepared": "true"}},
                       "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "managed-csi",
                                "resources": {"requests": {"storage": "64Gi"}}}})
    api_server.wait_for(lambda: (api_server.get("persistentvolumeclaims", name, "default").get("status") or {})
                        .get("phase") == "Bound", message=f"claim {name} to be bound")


def test_existing_claim_of_another_driver_is_snapshotted_with_that_drivers_default_class(api_server, running_operator):
    azure_disk_claim(api_server, "disk-data")
    api_server.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                       "metadata": {"name": "csi-azuredisk-vsc",
                                    "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
                       "driver": AZURE_DISK, "deletionPolicy": "Delete"})
    api_server.create(experiment("lanes-disk", spec={"dataset": {"synthetic": None,
                                                                 "existingClaim": {"claimName": "disk-data"}}}))
    exp = wait_phase(api_server, "lanes-disk", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    [snapshot] = children(api_server, "lanes-disk")["volumesnapshots"]
    assert snapshot["spec"]["volumeSnapshotClassName"] == "csi-azuredisk-vsc"
    content = api_server.get("volumesnapshotcontents", snapshot["status"]["boundVolumeSnapshotContentName"])
    assert content["spec"]["driver"] == AZURE_DISK


def test_existing_claim_of_a_driver_without_a_class_is_a_preflight_condition_naming_it(api_server, running_operator):
    azure_disk_claim(api_server, "disk-orphan")
    api_server.create(experiment("lanes-noclass", spec={"dataset": {"synthetic": None,
                                                                    "existingClaim": {"claimName": "disk-orphan"}}}))
    api_server.wait_for(lambda: ((get_experiment(api_server, "lanes-noclass").get("status") or {})
                                 .get("conditions") and condition(get_experiment(api_server, "lanes-noclass"),
                                                                  "Preflight")["status"] == "False"))
    preflight = condition(get_experiment(api_server, "lanes-noclass"), "Preflight")
    assert preflight["reason"] == "NoVolumeSnapshotClassForDriver"
    assert f'no VolumeSnapshotClass for CSI driver "{AZURE_DISK}" of PersistentVolumeClaim "disk-orphan"' in \
        preflight["message"]
    assert 'the operator\'s default "netapp-csi-snapclass" (LANEX_DEFAULT_SNAPSHOT_CLASS) is of driver ' \
           '"csi.trident.netapp.io"' in preflight["message"]
    assert child_counts(api_server, "lanes-noclass") == NO_CHILDREN  # nothing created, no snapshot
    api_server.wait_for(lambda: "NoVolumeSnapshotClassForDriver" in warning_reasons(api_server, "lanes-noclass"))


# One rule for the three that name a snapshot class: the experiment's reconciler, a sweep's dataset
# snapshot and `lanex render` (controller.preflight.chooses_class_by_driver and snapshot_class).

def disk_sweep(name: str, claim: str) -> dict:
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"dataset": {"existingClaim": {"claimName": claim}},
                                  "training": {"workers": 1, "epochs": 1, "backbone": "small"}},
                     "parameters": [{"path": "learningRate", "values": [0.01]}]}}


def sweep_of(api_server, name: str) -> dict:
    return api_server.get("lanesweeps", name, "default") or {}


def test_a_sweeps_dataset_snapshot_of_an_existing_claim_uses_its_drivers_class(api_server, running_operator):
    azure_disk_claim(api_server, "disk-sweep-data")
    api_server.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                       "metadata": {"name": "csi-azuredisk-vsc",
                                    "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
                       "driver": AZURE_DISK, "deletionPolicy": "Delete"})
    api_server.create(disk_sweep("disks", "disk-sweep-data"))
    api_server.wait_for(lambda: (sweep_of(api_server, "disks").get("status") or {}).get("phase") in ("Succeeded", "Failed"),
                        timeout=60, message="the sweep to finish")
    status = sweep_of(api_server, "disks")["status"]
    assert status["phase"] == "Succeeded", status
    snapshot = api_server.get("volumesnapshots", "disks-dataset", "default")
    assert snapshot["spec"]["volumeSnapshotClassName"] == "csi-azuredisk-vsc"  # not the operator's Trident default
    content = api_server.get("volumesnapshotcontents", snapshot["status"]["boundVolumeSnapshotContentName"])
    assert content["spec"]["driver"] == AZURE_DISK


def test_a_sweep_on_a_claim_whose_driver_has_no_class_stops_at_preflight_naming_it(api_server, running_operator):
    azure_disk_claim(api_server, "disk-sweep-orphan")
    api_server.create(disk_sweep("orphans", "disk-sweep-orphan"))

    def preflight():
        conditions = (sweep_of(api_server, "orphans").get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Preflight" and c["status"] == "False"), None)

    shown = api_server.wait_for(preflight, message="the sweep's Preflight False")
    assert shown["reason"] == "NoVolumeSnapshotClassForDriver"
    assert (f'no VolumeSnapshotClass for CSI driver "{AZURE_DISK}" of PersistentVolumeClaim "disk-sweep-orphan" '
            f"(spec.template.dataset.existingClaim.claimName") in shown["message"]
    assert api_server.get("volumesnapshots", "orphans-dataset", "default") is None
    assert api_server.list("laneexperiments", "default") == []  # no trial either


def test_render_shows_the_snapshot_class_of_an_existing_claim_as_decided_on_the_cluster(tmp_path):
    from lanex_operator.api.models import parse_spec
    from lanex_operator.cli.render import render_objects, snapshot_class_placeholder
    from lanex_operator.plan.defaults import ClusterDefaults

    def rendered_class(dataset: dict, snapshot: dict | None = None) -> str:
        spec = parse_spec({"dataset": dataset, "snapshot": snapshot or {}, "training": {"backbone": "small"}})
        objects = render_objects({"name": "shown"}, spec, "default", ClusterDefaults())
        return [o for o in objects if o["kind"] == "VolumeSnapshot"][0]["spec"]["volumeSnapshotClassName"]

    # The operator takes the class of the bound volume's CSI driver: render cannot know it, so it says so
    # (it used to print the Trident default, which the snapshot controller would use whatever the driver).
    assert rendered_class({"existingClaim": {"claimName": "disk-data"}}) == snapshot_class_placeholder("disk-data")
    assert "disk-data" in snapshot_class_placeholder("disk-data")
    assert rendered_class({"existingClaim": {"claimName": "disk-data"}},
                          {"volumeSnapshotClassName": "csi-azuredisk-vsc"}) == "csi-azuredisk-vsc"
    assert rendered_class({"synthetic": {}}) == "netapp-csi-snapclass"  # a claim lanex creates: the default


def test_stuck_pods_are_read_at_a_bounded_rate_not_on_every_pass(api_server, operator_factory):
    api_server.knobs.stuck_pods["lanes-rate-prepare"] = ("ImagePullBackOff", POD_TROUBLES["ImagePullBackOff"])
    # A pass every 0.05 s (about 100 while the pod is stuck), the pods read at most once a second.
    operator_factory({**BOUNDS, "LANEX_OPERATOR_RESYNC_SECONDS": "0.05", "LANEX_OPERATOR_STUCK_CHECK_SECONDS": "1",
                      "LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS": "5"})
    api_server.create(experiment("lanes-rate"))
    failed(api_server, "lanes-rate")
    operator = [call for call in api_server.calls() if call.user_agent.startswith("lanex-operator/")]
    reads = [call.at for call in operator if (call.resource, call.verb) == ("pods", "list")]
    assert reads, "the stuck pod was never read"
    span = reads[-1] - reads[0]
    assert len(reads) <= span / 1.0 + 2, (len(reads), span)  # one read per interval, whatever the passes
    assert api_server.get("laneexperiments", "lanes-rate", "default")["status"]["reason"] == "DownloadFailed"


def test_simulated_snapshot_controller_chooses_classes_as_the_external_snapshotter_does(api_server):
    """The simulation's premise for the operator's choice: a named class is used whatever its driver (and
    fails on a volume of another driver); with none named, the driver's default class is filled in."""
    azure_disk_claim(api_server, "disk-sim")

    def snapshot(name: str, klass: str | None = None) -> dict:
        api_server.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                           "metadata": {"name": name, "namespace": "default"},
                           "spec": {"source": {"persistentVolumeClaimName": "disk-sim"},
                                    **({"volumeSnapshotClassName": klass} if klass else {})}})
        return api_server.wait_for(lambda: (api_server.get("volumesnapshots", name, "default").get("status") or {})
                                   .get("readyToUse") is not None and api_server.get("volumesnapshots", name,
                                                                                     "default"))

    wrong = snapshot("with-trident-class", "netapp-csi-snapclass")
    assert wrong["status"]["readyToUse"] is False
    assert "not found by driver csi.trident.netapp.io" in wrong["status"]["error"]["message"]
    unset = snapshot("without-class")
    assert unset["status"]["error"]["message"] == ("Failed to set default snapshot class with error cannot find "
                                                   "default snapshot class")
    assert any(e["reason"] == "SetDefaultSnapshotClassFailed" and e["involvedObject"]["name"] == "without-class"
               for e in api_server.list("events", "default", api_version="v1"))
    api_server.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                       "metadata": {"name": "csi-azuredisk-vsc",
                                    "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
                       "driver": AZURE_DISK, "deletionPolicy": "Delete"})
    filled = snapshot("defaulted")
    assert filled["status"]["readyToUse"] is True
    assert filled["spec"]["volumeSnapshotClassName"] == "csi-azuredisk-vsc"


def test_a_class_named_in_the_spec_is_used_as_is_even_for_another_driver(api_server, running_operator):
    azure_disk_claim(api_server, "disk-named")
    api_server.create(experiment("lanes-named", spec={
        "dataset": {"synthetic": None, "existingClaim": {"claimName": "disk-named"}},
        "snapshot": {"volumeSnapshotClassName": "netapp-csi-snapclass", "readyTimeoutSeconds": 2}}))
    exp = failed(api_server, "lanes-named")
    [snapshot] = children(api_server, "lanes-named")["volumesnapshots"]
    assert snapshot["spec"]["volumeSnapshotClassName"] == "netapp-csi-snapclass"  # the user's choice, unchanged
    assert exp["status"]["reason"] == "SnapshotFailed"
    assert "not found by driver csi.trident.netapp.io" in exp["status"]["message"]  # what that choice gives


def test_restore_from_a_snapshot_that_never_gets_ready_fails_after_the_dataset_bound(api_server, operator_factory):
    api_server.knobs.stall_snapshots.add("stalled-source")
    api_server.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                       "metadata": {"name": "stalled-source", "namespace": "default"},
                       "spec": {"volumeSnapshotClassName": "netapp-csi-snapclass",
                                "source": {"persistentVolumeClaimName": "gone-claim"}}})
    operator_factory({**BOUNDS, "LANEX_OPERATOR_DATASET_BOUND_TIMEOUT_SECONDS": "3"})
    api_server.create(experiment("lanes-restore-stall", spec={"dataset": {
        "synthetic": None, "fromSnapshot": {"snapshotName": "stalled-source"}}}))
    exp = failed(api_server, "lanes-restore-stall")
    assert exp["status"]["reason"] == "DatasetFailed"
    assert exp["status"]["message"].startswith("VolumeSnapshot stalled-source (spec.dataset.fromSnapshot.snapshotName) "
                                               "was not ready to use after ")
    assert child_counts(api_server, "lanes-restore-stall") == NO_CHILDREN  # no claim from a snapshot not ready


# --- waits that only pods' restarts, Events or readiness tell -----------------------------------

ANF_EXPORT = ('MountVolume.SetUp failed for volume "pvc-7d2e" : mount failed: exit status 32: mount.nfs: access '
              "denied by server while mounting 10.0.4.4:/lanes-vol (check the ANF volume's export policy rules)")


def test_a_crash_looping_worker_shows_its_last_words_then_fails_after_the_restart_bound(api_server, operator_factory):
    name = "lanes-crashloop"
    api_server.knobs.stuck_pods[f"{name}-train"] = ("CrashLoopBackOff", "RuntimeError: CUDA error: out of memory")
    operator_factory({**BOUNDS, "LANEX_OPERATOR_CRASH_LOOP_RESTARTS": "6"})
    api_server.create(experiment(name))
    shown = waiting_condition(api_server, name, "Trained", "CrashLoopBackOff")
    assert shown["status"] == "Unknown"
    assert re.fullmatch(rf"MPIJob {name}-train: pod {name}-train-\S+ is CrashLoopBackOff: container \S+ restarted "
                        r"[1-5] times; it last said: RuntimeError: CUDA error: out of memory", shown["message"])
    api_server.wait_for(lambda: "CrashLoopBackOff" in warning_reasons(api_server, name),
                        message="a Warning Event CrashLoopBackOff on the experiment")
    exp = failed(api_server, name)
    assert exp["status"]["reason"] == "TrainingFailed"
    assert re.search(r"kept crashing, (\d+) restarts \(LANEX_OPERATOR_CRASH_LOOP_RESTARTS=6\)", exp["status"]["message"])
    assert int(re.search(r"kept crashing, (\d+) restarts", exp["status"]["message"])[1]) >= 6
    assert "RuntimeError: CUDA error: out of memory" in exp["status"]["message"]
    # One Event when it got stuck, not one per restart.
    assert warning_reasons(api_server, name).count("CrashLoopBackOff") == 1


@pytest.mark.parametrize("reason, owner, step, failure", [
    ("FailedMount", "prepare", "DataPrepared", "DownloadFailed"),
    ("FailedAttachVolume", "train", "Trained", "TrainingFailed"),
])
def test_a_volume_that_cannot_be_mounted_shows_the_events_message_then_fails(api_server, operator_factory,
                                                                            reason, owner, step, failure):
    name = f"lanes-{reason.lower()}"
    message = ANF_EXPORT if reason == "FailedMount" else \
        'AttachVolume.Attach failed for volume "pvc-7d2e" : timed out waiting for external-attacher'
    api_server.knobs.stuck_pods[f"{name}-{owner}"] = (reason, message)
    operator_factory(BOUNDS)
    api_server.create(experiment(name))
    shown = waiting_condition(api_server, name, step, reason)
    kind = "Job" if owner == "prepare" else "MPIJob"
    assert shown["status"] == "Unknown" and shown["message"].startswith(f"{kind} {name}-{owner}: pod {name}-{owner}-")
    assert f" is {reason}: {message}" in shown["message"]
    exp = failed(api_server, name)
    assert exp["status"]["reason"] == failure
    assert f"was {reason} for " in exp["status"]["message"]
    assert "(LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS=8)" in exp["status"]["message"]


def test_workers_that_never_become_ready_show_how_many_are_then_fail_the_training(api_server, operator_factory):
    name = "lanes-unready"
    api_server.knobs.unready_workers.add(name)
    operator_factory({**BOUNDS, "LANEX_OPERATOR_TRAINING_START_TIMEOUT_SECONDS": "8"})
    api_server.create(experiment(name))
    shown = waiting_condition(api_server, name, "Trained", "WaitingForWorkers")
    assert shown["message"] == (f"MPIJob {name}-train: 0 of 2 workers Ready, no launcher pod yet (mpi-operator creates "
                                f"it once every worker is Ready under WaitForWorkersReady)")
    exp = failed(api_server, name)
    assert exp["status"]["reason"] == "TrainingFailed"
    assert exp["status"]["message"].startswith(f"MPIJob {name}-train did not start training ")
    assert "(LANEX_OPERATOR_TRAINING_START_TIMEOUT_SECONDS=8): 0 of 2 workers Ready, no launcher pod yet" \
        in exp["status"]["message"]
    assert ("launcher-created", f"{name}-train") not in api_server.sim.history


def test_a_preflight_problem_that_is_never_fixed_fails_the_experiment_after_its_bound(api_server, operator_factory):
    operator_factory({**BOUNDS, "LANEX_OPERATOR_PREFLIGHT_TIMEOUT_SECONDS": "4"})
    api_server.create(experiment("lanes-noclass", spec={"dataset": {"storageClassName": "premium-typo"}}))
    shown = waiting_condition(api_server, "lanes-noclass", "Preflight", "MissingStorageClass")
    assert shown["status"] == "False" and "premium-typo" in shown["message"]
    exp = failed(api_server, "lanes-noclass")
    assert exp["status"]["reason"] == "PreflightFailed"
    assert "(LANEX_OPERATOR_PREFLIGHT_TIMEOUT_SECONDS=4)" in exp["status"]["message"]
    assert "premium-typo" in exp["status"]["message"]
    assert child_counts(api_server, "lanes-noclass") == NO_CHILDREN


def test_a_kueue_queue_wait_is_bounded_by_the_spec_and_the_queued_mpijob_is_deleted(api_server, operator_factory):
    operator_factory(BOUNDS)
    api_server.create({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                       "metadata": {"name": "team-a-queue", "namespace": "default"}, "spec": {"clusterQueue": "gpus"}})
    api_server.create(experiment("lanes-qbound", spec={"scheduler": {"type": "kueue", "queueName": "team-a-queue",
                                                                     "queueTimeoutSeconds": 3}}))
    api_server.wait_for(lambda: api_server.get("mpijobs", "lanes-qbound-train", "default"), message="the MPIJob")
    exp = failed(api_server, "lanes-qbound")  # nothing admits it
    assert exp["status"]["reason"] == "QueueTimeout"
    assert exp["status"]["message"].startswith("Kueue did not admit MPIJob lanes-qbound-train from LocalQueue "
                                               "team-a-queue within spec.scheduler.queueTimeoutSeconds=3")
    assert (condition(exp, "Queued")["status"], condition(exp, "Queued")["reason"]) == ("False", "QueueTimeout")
    api_server.wait_for(lambda: api_server.get("mpijobs", "lanes-qbound-train", "default") is None,
                        message="the queued MPIJob to be deleted, so Kueue never admits it later")
