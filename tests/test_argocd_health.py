"""Argo CD pieces: the health checks (Lua, run with lupa as Argo CD runs them) and the Application.

Scenarios: Argo CD shows a LaneExperiment Healthy when it succeeded, Degraded with the reason
when it failed, Progressing with the phase otherwise; an MPIJob by its conditions; the argocd-cm
patch embeds exactly the tested scripts; the Application syncs the chart with values it accepts.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from lupa import lua51

from chart_rbac import CHART_DIR, ROOT, manifests, render_chart
from lanex_operator.api.status import (
    Condition,
    FailureReason,
    LaneExperimentStatus,
    Phase,
    Provenance,
    Results,
)

ARGOCD_DIR = ROOT / "deploy" / "argocd"
HEALTH_KEYS = ("lanex.dev_LaneExperiment", "lanex.dev_LaneSweep", "kubeflow.org_MPIJob")
# Argo CD runs health scripts in gopher-lua (Lua 5.1) with the base functions, `table` and a
# "safe" `os` (clock, date, difftime, time) only: no `string`, `math` or `io` unless an admin
# sets resource.customizations.useOpenLibs. The same sandbox runs the scripts here.
SANDBOX_BASE = ("assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
                "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "table")
SAFE_OS = ("clock", "date", "difftime", "time")


def without_nulls(value: Any) -> Any:
    """JSON nulls are absent fields in Argo CD's Lua view of an object."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def run_lua(script: str, obj: dict[str, Any], chunk_name: str = "health.lua") -> tuple[str, str]:
    """Run a health script with `obj` as Argo CD does (Lua 5.1, sandboxed); returns (status, message)."""
    runtime = lua51.LuaRuntime(register_eval=False)
    run_sandboxed = runtime.eval(
        "function(source, name, env)"
        "  local chunk, err = loadstring(source, name)"
        "  if chunk == nil then error(err) end"
        "  setfenv(chunk, env)"
        "  return chunk()"
        " end")
    lua_globals = runtime.globals()
    environment = runtime.table_from({name: lua_globals[name] for name in SANDBOX_BASE})
    environment["os"] = runtime.table_from({name: lua_globals.os[name] for name in SAFE_OS})
    environment["obj"] = runtime.table_from(without_nulls(obj), recursive=True)
    result = run_sandboxed(script, f"@{chunk_name}", environment)
    assert set(result.keys()) == {"status", "message"}, dict(result)
    return result["status"], result["message"]


def run_health(key: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run deploy/argocd/health/<key>.lua on `obj`."""
    return run_lua((ARGOCD_DIR / "health" / f"{key}.lua").read_text(), obj, f"{key}.lua")


def experiment(status: LaneExperimentStatus | None = None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
                           "metadata": {"name": "tusimple", "namespace": "runai-lane-detection",
                                        "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    return obj


def condition(type_: str, status: str, reason: str = "", message: str = "") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message)


def mpijob(*conditions: tuple[str, str, str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob",
                           "metadata": {"name": "tusimple-train"}, "spec": {}}
    if conditions:
        obj["status"] = {"conditions": [{"type": t, "status": s, "reason": r, "message": m}
                                        for t, s, r, m in conditions],
                         "replicaStatuses": {"Launcher": {"active": 1}, "Worker": {"active": 3}}}
    return obj


# --- LaneExperiment -------------------------------------------------------------------------------


def test_experiment_without_status_waits_for_the_operator():
    assert run_health("lanex.dev_LaneExperiment", experiment()) == ("Progressing", "Waiting for the operator")
    assert run_health("lanex.dev_LaneExperiment", experiment(LaneExperimentStatus())) == (
        "Progressing", "Waiting for the operator")


@pytest.mark.parametrize("phase", [p for p in Phase if p not in (Phase.SUCCEEDED, Phase.FAILED, Phase.STOPPED)])
def test_experiment_in_progress_shows_its_phase(phase: Phase):
    status = LaneExperimentStatus(phase=phase, observed_generation=1)
    assert run_health("lanex.dev_LaneExperiment", experiment(status)) == ("Progressing", phase.value)
    status.message = "3 of 3 workers running"
    assert run_health("lanex.dev_LaneExperiment", experiment(status)) == (
        "Progressing", f"{phase.value}: 3 of 3 workers running")


def test_succeeded_experiment_is_healthy_with_accuracy_and_snapshot():
    status = LaneExperimentStatus(
        phase=Phase.SUCCEEDED, observed_generation=1,
        conditions=[condition("Succeeded", "True", "Completed", "snapshot ready"),
                    condition("StorageTier", "True", "AtStandard", "moved back to Standard")],
        results=Results(accuracy=0.95234, fp=0.06, fn=0.02),
        provenance=Provenance(result_snapshot="tusimple-20250101120000"))
    assert run_health("lanex.dev_LaneExperiment", experiment(status)) == (
        "Healthy", "Succeeded: TuSimple accuracy 95.23%, snapshot tusimple-20250101120000")
    bare = LaneExperimentStatus(phase=Phase.SUCCEEDED)
    assert run_health("lanex.dev_LaneExperiment", experiment(bare)) == ("Healthy", "Succeeded")


@pytest.mark.parametrize("reason", list(FailureReason))
def test_failed_experiment_is_degraded_with_the_failed_conditions_reason(reason: FailureReason):
    status = LaneExperimentStatus(
        phase=Phase.FAILED, reason=reason, message="summary",
        conditions=[condition("Trained", "False", "Failed", "worker exited"),
                    condition("Failed", "True", reason.value, "launcher exited with code 1: CUDA out of memory")])
    assert run_health("lanex.dev_LaneExperiment", experiment(status)) == (
        "Degraded", f"Failed: {reason.value}: launcher exited with code 1: CUDA out of memory")


def test_failed_experiment_without_condition_falls_back_to_status_reason():
    status = LaneExperimentStatus(phase=Phase.FAILED, reason=FailureReason.INVALID_SPEC,
                                  message="spec.training.workers: must be >= 1")
    assert run_health("lanex.dev_LaneExperiment", experiment(status)) == (
        "Degraded", "Failed: InvalidSpec: spec.training.workers: must be >= 1")


def test_storage_tier_failure_is_mentioned_without_changing_health():
    tier = condition("StorageTier", "False", "PoolNotFound", "capacity pool for Ultra is not configured")
    training = LaneExperimentStatus(phase=Phase.TRAINING, message="epoch 3/30", conditions=[tier])
    assert run_health("lanex.dev_LaneExperiment", experiment(training)) == (
        "Progressing",
        "Training: epoch 3/30 (warning: StorageTier PoolNotFound: capacity pool for Ultra is not configured)")
    done = LaneExperimentStatus(phase=Phase.SUCCEEDED, conditions=[tier])
    status, message = run_health("lanex.dev_LaneExperiment", experiment(done))
    assert status == "Healthy" and message.endswith("(warning: StorageTier PoolNotFound: capacity pool for Ultra "
                                                    "is not configured)")


def test_training_shows_its_progress_and_eta_and_a_stall_as_a_warning():
    status = LaneExperimentStatus(phase=Phase.TRAINING, message="training with MPIJob tusimple-train (3 workers)",
                                  progress_summary="12/30 40%", eta="1h05m", observed_generation=1)
    assert run_health("lanex.dev_LaneExperiment", experiment(status)) == (
        "Progressing", "Training 12/30 40%, ETA 1h05m: training with MPIJob tusimple-train (3 workers)")
    status.conditions = [condition("Stalled", "True", "NoProgress", "no training progress for 1800s (last: epoch 12/30, "
                                   "step 3600/9000, seen at 2026-12-01T22:00:00Z)")]
    assert run_health("lanex.dev_LaneExperiment", experiment(status))[1].endswith(
        "(warning: Stalled NoProgress: no training progress for 1800s (last: epoch 12/30, step 3600/9000, "
        "seen at 2026-12-01T22:00:00Z))")
    status.conditions = [condition("Stalled", "False", "ProgressResumed", "training progresses again")]
    assert "warning" not in run_health("lanex.dev_LaneExperiment", experiment(status))[1]


def test_ignored_spec_change_and_tier_warning_are_both_listed():
    status = LaneExperimentStatus(phase=Phase.FAILED, conditions=[
        condition("Failed", "True", "Timeout", "no progress for 3600 s"),
        condition("StorageTier", "False", "MoveTimedOut", "pool change still running"),
        condition("SpecChangeIgnored", "True", "TrainingStarted", "generation 2 was not applied"),
    ], observed_generation=2)
    assert run_health("lanex.dev_LaneExperiment", experiment(status, generation=2)) == (
        "Degraded", "Failed: Timeout: no progress for 3600 s (warning: StorageTier MoveTimedOut: pool change still "
                    "running; SpecChangeIgnored TrainingStarted: generation 2 was not applied)")


def test_unobserved_generation_is_progressing_until_the_operator_catches_up():
    status = LaneExperimentStatus(phase=Phase.PENDING, observed_generation=1)
    assert run_health("lanex.dev_LaneExperiment", experiment(status, generation=2)) == (
        "Progressing", "Pending: waiting for the operator to observe generation 2")
    status.observed_generation = 2
    assert run_health("lanex.dev_LaneExperiment", experiment(status, generation=2)) == ("Progressing", "Pending")


# --- MPIJob ----------------------------------------------------------------------------------------


MPIJOB_CASES = [
    ("no status yet", (), ("Progressing", "Waiting for the MPI operator")),
    ("created", (("Created", "True", "MPIJobCreated", "MPIJob default/t is created."),),
     ("Progressing", "Created: MPIJobCreated: MPIJob default/t is created.")),
    ("running", (("Created", "True", "MPIJobCreated", ""), ("Running", "True", "MPIJobRunning", "launcher running")),
     ("Progressing", "Running: MPIJobRunning: launcher running")),
    ("restarting", (("Created", "True", "MPIJobCreated", ""), ("Running", "False", "MPIJobRunning", ""),
                    ("Restarting", "True", "MPIJobRestarting", "worker-1 evicted")),
     ("Progressing", "Restarting: MPIJobRestarting: worker-1 evicted")),
    ("succeeded", (("Created", "True", "MPIJobCreated", ""), ("Running", "False", "MPIJobRunning", ""),
                   ("Succeeded", "True", "MPIJobSucceeded", "MPIJob default/t successfully completed.")),
     ("Healthy", "Succeeded: MPIJobSucceeded: MPIJob default/t successfully completed.")),
    ("failed", (("Created", "True", "MPIJobCreated", ""), ("Running", "False", "MPIJobRunning", ""),
                ("Failed", "True", "MPIJobFailed", "launcher pod failed: exit code 1")),
     ("Degraded", "Failed: MPIJobFailed: launcher pod failed: exit code 1")),
    ("suspended", (("Created", "True", "MPIJobCreated", ""), ("Suspended", "True", "MPIJobSuspended", "suspended")),
     ("Suspended", "Suspended: MPIJobSuspended: suspended")),
    ("resumed after suspend", (("Created", "True", "MPIJobCreated", ""), ("Suspended", "False", "MPIJobResumed", ""),
                               ("Running", "True", "MPIJobRunning", "")),
     ("Progressing", "Running: MPIJobRunning")),
    ("only false conditions", (("Created", "False", "Pending", ""),), ("Progressing", "Waiting for the MPI operator")),
]


@pytest.mark.parametrize("conditions,expected", [case[1:] for case in MPIJOB_CASES],
                         ids=[case[0] for case in MPIJOB_CASES])
def test_mpijob_health_follows_its_conditions(conditions, expected):
    assert run_health("kubeflow.org_MPIJob", mpijob(*conditions)) == expected


def test_early_stopped_experiment_is_healthy_with_the_reason():
    status = LaneExperimentStatus(phase=Phase.STOPPED, reason=FailureReason.EARLY_STOPPED, observed_generation=1,
                                  message="training stopped early, MPIJob lr-003-train deleted")
    assert run_health("lanex.dev_LaneExperiment", experiment(status)) == (
        "Healthy", "Stopped: EarlyStopped: training stopped early, MPIJob lr-003-train deleted")


# --- LaneSweep ------------------------------------------------------------------------------------


def lane_sweep(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    from lanex_operator.api.sweep import LaneSweepStatus

    obj: dict[str, Any] = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep",
                           "metadata": {"name": "lr", "namespace": "default", "generation": generation}, "spec": {}}
    if status is not None:  # through the model: the script reads exactly the fields the operator writes
        obj["status"] = LaneSweepStatus.model_validate(status).model_dump(by_alias=True, mode="json", exclude_none=True)
    return obj


def test_sweep_health_follows_its_phase_with_trials_and_best():
    assert run_health("lanex.dev_LaneSweep", lane_sweep()) == ("Progressing", "Waiting for the operator")
    assert run_health("lanex.dev_LaneSweep", lane_sweep({"phase": "PreparingDataset", "observedGeneration": 1,
                                                         "message": "preparing the dataset once"})) == (
        "Progressing", "PreparingDataset: preparing the dataset once")
    running = {"phase": "Running", "observedGeneration": 1, "trialCount": 6,
               "counts": {"pending": 2, "running": 2, "succeeded": 1, "stopped": 1},
               "bestTrial": {"name": "lr-000", "objective": 0.95234}}
    assert run_health("lanex.dev_LaneSweep", lane_sweep(running)) == (
        "Progressing", "Running: 2/6 trials finished, 2 running, best lr-000 (0.9523)")
    assert run_health("lanex.dev_LaneSweep", lane_sweep(running, generation=2)) == (
        "Progressing", "Running: waiting for the operator to observe generation 2")
    done = dict(running, phase="Succeeded", counts={"succeeded": 5, "stopped": 1},
                bestTrial={"name": "lr-005", "objective": 0.97})
    assert run_health("lanex.dev_LaneSweep", lane_sweep(done)) == (
        "Healthy", "Succeeded: best lr-005 (0.97); 6 trials: 5 succeeded, 1 stopped")


def test_failed_sweep_is_degraded_with_the_reason_and_an_ignored_change_is_a_warning():
    failed = {"phase": "Failed", "reason": "AllTrialsFailed", "message": "no trial succeeded",
              "conditions": [condition("Failed", "True", "AllTrialsFailed", "no trial succeeded"),
                             condition("SpecChangeIgnored", "True", "SweepStarted", "spec generation 2 was not applied")]}
    assert run_health("lanex.dev_LaneSweep", lane_sweep(failed)) == (
        "Degraded", "Failed: AllTrialsFailed: no trial succeeded (warning: SpecChangeIgnored SweepStarted: spec "
                    "generation 2 was not applied)")
    bare = {"phase": "Failed", "reason": "InvalidSpec", "message": "spec.parameters[0] (learningRat): unknown field"}
    assert run_health("lanex.dev_LaneSweep", lane_sweep(bare)) == (
        "Degraded", "Failed: InvalidSpec: spec.parameters[0] (learningRat): unknown field")


# --- the manifests ---------------------------------------------------------------------------------


def test_argocd_cm_patch_embeds_exactly_the_tested_scripts():
    config_map = yaml.safe_load((ARGOCD_DIR / "argocd-cm-health.yaml").read_text())
    assert (config_map["kind"], config_map["metadata"]["name"], config_map["metadata"]["namespace"]) == (
        "ConfigMap", "argocd-cm", "argocd")
    assert config_map["data"] == {
        f"resource.customizations.health.{key}": (ARGOCD_DIR / "health" / f"{key}.lua").read_text()
        for key in HEALTH_KEYS
    }
    kubernetes_validate.validate(config_map, "1.30", strict=True)


def test_application_syncs_the_chart_automatically_with_values_it_accepts():
    application = yaml.safe_load((ARGOCD_DIR / "application.yaml").read_text())
    assert (application["apiVersion"], application["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert "finalizers" not in application["metadata"]  # deleting the app must not delete the CRD
    source = application["spec"]["source"]
    assert (ROOT / source["path"]) == CHART_DIR and (CHART_DIR / "Chart.yaml").is_file()
    assert application["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert {"ServerSideApply=true", "CreateNamespace=true"} <= set(application["spec"]["syncPolicy"]["syncOptions"])
    objects = manifests(render_chart(source["helm"]["valuesObject"], release=source["helm"]["releaseName"],
                                     namespace=application["spec"]["destination"]["namespace"]))
    deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == "lanex-system"
    assert "--namespace=runai-lane-detection" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [obj["metadata"]["namespace"] for obj in objects if obj["kind"] == "Role"] == ["runai-lane-detection"]


def test_sandbox_refuses_libraries_argo_cd_does_not_provide():
    # The scripts above pass in this sandbox, so they use nothing Argo CD lacks.
    assert run_lua('local t = {"a", "b"}; return {status = "Healthy", message = table.concat(t, ",")}', {}) == (
        "Healthy", "a,b")
    for call in ('string.format("%d", 1)', "math.floor(1.5)", "io.read()", 'require("json")', "os.exit(1)"):
        with pytest.raises(lua51.LuaError):
            run_lua(f'return {{status = "Healthy", message = tostring({call})}}', {})
