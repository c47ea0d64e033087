"""The operator's small pure pieces: status bookkeeping, the child cache, settings, retention rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from lanex_operator.api.models import FailureReason, Phase
from lanex_operator.controller.children import EXPERIMENT_LABEL, JOB, PVC, ChildCache
from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.kube import KubeError, object_path
from lanex_operator.controller.retention import snapshots_in_use
from lanex_operator.controller.status import StatusBook


class Clock:
    def __init__(self) -> None:
        self.moment = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.moment


def test_condition_keeps_its_transition_time_until_its_status_changes_and_times_the_step():
    clock = Clock()
    book = StatusBook({}, generation=3, now=clock)
    book.enter(Phase.TRAINING, "training")
    started = book.condition("Trained")["lastTransitionTime"]
    clock.moment += timedelta(seconds=90)
    assert book.set_condition("Trained", "Unknown", "Running", "MPIJob running") is True
    assert book.condition("Trained")["lastTransitionTime"] == started
    assert book.since("Trained") == 90
    book.complete_step("Trained", "Succeeded", "done")
    assert book.condition("Trained")["lastTransitionTime"] == "2025-01-01T12:01:30Z"
    assert [(t.step, t.outcome, t.seconds) for t in book.timings] == [("Trained", "succeeded", 90.0)]
    assert book.condition("Trained")["observedGeneration"] == 3
    assert [e.reason for e in book.events] == ["Training"]


def test_failure_marks_the_running_step_and_both_terminal_conditions_in_one_patch():
    book = StatusBook({"phase": "Snapshotting"}, generation=1, now=Clock())
    book.set_condition("Snapshotted", "Unknown", "InProgress", "waiting")
    book.written()
    book.fail(FailureReason.SNAPSHOT_FAILED, "not ready after 900s")
    patch = book.merge_patch()["status"]
    assert patch["phase"] == "Failed" and patch["reason"] == "SnapshotFailed"
    assert {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]} == {
        "Snapshotted": ("False", "SnapshotFailed"), "Failed": ("True", "SnapshotFailed"),
        "Succeeded": ("False", "SnapshotFailed")}
    assert book.terminal and [(e.type, e.reason) for e in book.events] == [("Warning", "SnapshotFailed")]


def test_an_unchanged_condition_is_not_a_change():
    book = StatusBook({}, generation=1, now=Clock())
    book.set_condition("Preflight", "False", "MissingStorageClass", "x")
    book.written()
    assert book.set_condition("Preflight", "False", "MissingStorageClass", "x") is False
    assert book.merge_patch() == {"status": {}}


def test_child_cache_never_goes_back_to_an_older_version_or_resurrects_a_deleted_child():
    cache = ChildCache()
    labels = {EXPERIMENT_LABEL: "e"}
    newer = {"metadata": {"name": "d", "namespace": "ns", "resourceVersion": "20", "labels": labels},
             "status": {"phase": "Bound"}}
    older = {"metadata": {"name": "d", "namespace": "ns", "resourceVersion": "10", "labels": labels},
             "status": {"phase": "Pending"}}
    cache.put(PVC, newer)
    cache.put(PVC, older)
    assert cache.get(PVC, "ns", "d")["status"]["phase"] == "Bound"
    cache.forget(PVC, {"metadata": {"name": "d", "namespace": "ns", "resourceVersion": "30"}})
    cache.put(PVC, newer)
    assert cache.get(PVC, "ns", "d") is None


def test_child_cache_does_not_keep_unlabelled_objects_that_no_watch_event_would_refresh():
    cache = ChildCache()
    foreign = {"metadata": {"name": "j", "namespace": "ns", "resourceVersion": "5"}, "status": {}}
    assert cache.put(JOB, foreign) == foreign
    assert cache.get(JOB, "ns", "j") is None


def test_settings_come_from_the_environment_and_bad_values_name_the_variable():
    config = OperatorConfig.from_env({"LANEX_OPERATOR_RESYNC_SECONDS": "2.5",
                                      "LANEX_OPERATOR_API_ERROR_BACKOFFS": "0.1, 0.5"})
    assert config.resync_seconds == 2.5 and config.api_error_backoffs == (0.1, 0.5)
    with pytest.raises(ValueError, match="LANEX_OPERATOR_RETRY_DELAY_SECONDS='soon'"):
        OperatorConfig.from_env({"LANEX_OPERATOR_RETRY_DELAY_SECONDS": "soon"})
    with pytest.raises(ValueError, match="must be > 0"):
        OperatorConfig.from_env({"LANEX_OPERATOR_RESYNC_SECONDS": "0"})


def test_snapshots_named_as_a_claims_data_source_are_in_use():
    claims = [{"metadata": {"name": "restored"}, "spec": {"dataSource": {"kind": "VolumeSnapshot", "name": "s1"}}},
              {"metadata": {"name": "populated"}, "spec": {"dataSourceRef": {"kind": "VolumeSnapshot", "name": "s2"}}},
              {"metadata": {"name": "cloned"}, "spec": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "s3"}}},
              {"metadata": {"name": "plain"}, "spec": {}}]
    assert snapshots_in_use(claims) == {"s1": "restored", "s2": "populated"}


def test_api_errors_say_whether_a_retry_can_help():
    assert KubeError("PATCH", "/x", 500, "InternalError", "").retryable
    assert KubeError("PATCH", "/x", 409, "Conflict", "").retryable
    assert KubeError("GET", "/x", 0, "ClientConnectorError", "").retryable
    assert not KubeError("POST", "/x", 422, "Invalid", "").retryable
    assert not KubeError("PATCH", "/x", 403, "Forbidden", "").retryable
    assert KubeError("POST", "/x", 409, "AlreadyExists", "").already_exists
    assert object_path("batch/v1", "jobs", "ns", "j", "status") == "/apis/batch/v1/namespaces/ns/jobs/j/status"
    assert object_path("v1", "persistentvolumes", name="pv") == "/api/v1/persistentvolumes/pv"
