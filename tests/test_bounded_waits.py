"""The pure parts of the bounded waits: reading a stuck pod from its status, throttled reads, and the
choice of a snapshot class for a CSI driver (no cluster, no I/O)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.preflight import DEFAULT_SNAPSHOT_CLASS_ANNOTATION, choose_snapshot_class
from lanex_operator.controller.waits import ReadThrottle, starting_pods, stuck_pod

CREATED = "2026-12-01T10:00:00Z"


def pod(name: str, phase: str = "Pending", conditions=None, containers=None, init=None, start=None) -> dict:
    status = {"phase": phase, "conditions": conditions or [], "containerStatuses": containers or []}
    if init:
        status["initContainerStatuses"] = init
    if start:
        status["startTime"] = start
    return {"metadata": {"name": name, "creationTimestamp": CREATED}, "status": status}


def waiting(reason: str, message: str = "", name: str = "train") -> dict:
    return {"name": name, "ready": False, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}


def test_a_pod_pulling_its_image_or_creating_its_container_is_not_stuck():
    assert stuck_pod([pod("a", containers=[waiting("ContainerCreating")]),
                      pod("b", containers=[waiting("PodInitializing")]),
                      pod("c", phase="Running", containers=[{"name": "train", "state": {"running": {}}}])]) is None


def test_image_pull_back_off_names_the_pod_container_and_the_kubelets_message_since_the_pod_started():
    found = stuck_pod([pod("exp-train-worker-0", start="2026-12-01T10:00:05Z",
                           containers=[waiting("ImagePullBackOff", 'Back-off pulling image "x:1"')])])
    assert found is not None
    assert (found.pod, found.reason) == ("exp-train-worker-0", "ImagePullBackOff")
    assert found.describe() == 'pod exp-train-worker-0 is ImagePullBackOff: container train: Back-off pulling image "x:1"'
    assert found.seconds(datetime(2026, 12, 1, 10, 1, 5, tzinfo=timezone.utc)) == 60.0


def test_an_init_container_with_a_missing_secret_is_stuck():
    found = stuck_pod([pod("p", init=[waiting("CreateContainerConfigError", 'secret "s" not found', "fetch")])])
    assert found is not None and found.reason == "CreateContainerConfigError"
    assert found.message == 'container fetch: secret "s" not found'


def test_unschedulable_counts_from_the_schedulers_condition_and_the_longest_stuck_pod_is_reported():
    late = pod("b", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/3 nodes are available", "lastTransitionTime": "2026-12-01T10:05:00Z"}])
    early = pod("a", start="2026-12-01T10:01:00Z", containers=[waiting("ErrImagePull", "not found")])
    found = stuck_pod([late, early])
    assert found is not None and (found.pod, found.reason) == ("a", "ErrImagePull")
    only_late = stuck_pod([late])
    assert only_late is not None and only_late.message == "0/3 nodes are available"
    assert only_late.since == datetime(2026, 12, 1, 10, 5, tzinfo=timezone.utc)


def test_finished_or_deleted_pods_are_not_stuck():
    gone = pod("a", containers=[waiting("ImagePullBackOff")])
    gone["metadata"]["deletionTimestamp"] = CREATED
    assert stuck_pod([gone, pod("b", phase="Failed", containers=[waiting("ErrImagePull")])]) is None


def test_throttled_reads_reuse_the_result_until_the_interval_passes():
    now = [0.0]
    reads: list[str] = []
    throttle = ReadThrottle(20.0, clock=lambda: now[0])

    async def fetch(key: str) -> str:
        reads.append(key)
        return f"{key}#{len(reads)}"

    async def scenario() -> list[str]:
        seen = [await throttle.read("pods", lambda: fetch("pods")) for _ in range(5)]
        seen.append(await throttle.read("events", lambda: fetch("events")))
        now[0] = 20.0
        seen.append(await throttle.read("pods", lambda: fetch("pods")))
        return seen

    assert asyncio.run(scenario()) == ["pods#1"] * 5 + ["events#2", "pods#3"]
    assert reads == ["pods", "events", "pods"]


def snapshot_class(name: str, driver: str, default: bool = False) -> dict:
    annotations = {DEFAULT_SNAPSHOT_CLASS_ANNOTATION: "true"} if default else {}
    return {"metadata": {"name": name, "annotations": annotations}, "driver": driver}


CLASSES = [snapshot_class("netapp-csi-snapclass", "csi.trident.netapp.io"),
           snapshot_class("csi-azuredisk-vsc", "disk.csi.azure.com", default=True),
           snapshot_class("csi-azurefile-vsc", "file.csi.azure.com")]


@pytest.mark.parametrize("driver,classes,expected", [
    ("disk.csi.azure.com", CLASSES, "csi-azuredisk-vsc"),  # that driver's default wins
    ("csi.trident.netapp.io", CLASSES, "netapp-csi-snapclass"),  # no default: the configured one, same driver
    ("csi.trident.netapp.io", [*CLASSES, snapshot_class("trident-default", "csi.trident.netapp.io", default=True)],
     "trident-default"),
])
def test_the_class_of_the_volumes_driver_is_chosen(driver, classes, expected):
    assert choose_snapshot_class(classes, driver, "netapp-csi-snapclass", "claim c") == (expected, None)


def test_no_class_of_the_driver_is_a_problem_naming_the_driver_and_the_configured_class():
    klass, problem = choose_snapshot_class(CLASSES, "file.csi.azure.com", "netapp-csi-snapclass", 'claim "c"')
    assert klass is None and problem is not None
    assert problem.reason == "NoVolumeSnapshotClassForDriver"
    assert problem.message.startswith('no VolumeSnapshotClass for CSI driver "file.csi.azure.com" of claim "c"')
    assert 'the operator\'s default "netapp-csi-snapclass" (LANEX_DEFAULT_SNAPSHOT_CLASS) is of driver ' \
           '"csi.trident.netapp.io"' in problem.message
    _, missing = choose_snapshot_class([], "file.csi.azure.com", "gone-class", 'claim "c"')
    assert missing is not None and '"gone-class" (LANEX_DEFAULT_SNAPSHOT_CLASS) does not exist' in missing.message


def test_two_default_classes_of_one_driver_are_a_problem_as_for_the_snapshot_controller():
    classes = [*CLASSES, snapshot_class("second-disk-default", "disk.csi.azure.com", default=True)]
    klass, problem = choose_snapshot_class(classes, "disk.csi.azure.com", "netapp-csi-snapclass", 'claim "c"')
    assert klass is None and problem is not None and problem.reason == "AmbiguousVolumeSnapshotClass"
    assert '2 VolumeSnapshotClasses of CSI driver "disk.csi.azure.com" (csi-azuredisk-vsc, second-disk-default)' \
        in problem.message


def test_wait_bounds_are_read_from_the_environment_and_must_be_positive():
    config = OperatorConfig.from_env({"LANEX_OPERATOR_MPIJOB_CONDITION_TIMEOUT_SECONDS": "90",
                                      "LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS": "300",
                                      "LANEX_OPERATOR_STUCK_CHECK_SECONDS": "5"})
    assert (config.mpijob_condition_timeout_seconds, config.pod_stuck_timeout_seconds,
            config.stuck_check_seconds) == (90.0, 300.0, 5.0)
    with pytest.raises(ValueError, match="LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS='0': must be > 0"):
        OperatorConfig.from_env({"LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS": "0"})


def test_a_crash_looping_container_is_stuck_with_its_restarts_and_last_words():
    crashing = {"name": "worker", "ready": False, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "RuntimeError: NCCL timeout"}}}
    found = stuck_pod([pod("w-0", phase="Running", start="2026-12-01T10:00:05Z", containers=[crashing])])
    assert found is not None and (found.reason, found.restarts) == ("CrashLoopBackOff", 4)
    assert found.message == "container worker restarted 4 times; it last said: RuntimeError: NCCL timeout"
    silent = {**crashing, "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
    assert stuck_pod([pod("w-1", phase="Running", containers=[silent])]).message == (
        "container worker restarted 4 times; it last said: OOMKilled with exit code 137")


def test_only_scheduled_pods_still_creating_their_containers_are_examined_for_volume_events():
    scheduled = [{"type": "PodScheduled", "status": "True"}]
    creating = pod("b", conditions=scheduled, containers=[waiting("ContainerCreating")])
    no_status_yet = pod("a", conditions=scheduled)
    unscheduled = pod("c")
    running = pod("d", phase="Running", conditions=scheduled, containers=[{"name": "t", "state": {"running": {}}}])
    pulling = pod("e", conditions=scheduled, containers=[waiting("ImagePullBackOff")])
    assert [p["metadata"]["name"] for p in starting_pods([creating, running, unscheduled, no_status_yet, pulling])] \
        == ["a", "b"]
