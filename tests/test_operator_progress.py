"""Watching a run while it trains: status.progress, printer columns, gauges, stalls, the request budget.

The real kopf operator runs against the emulated cluster, whose simulated launcher logs the trainer's
`LANEX_PROGRESS {...}` lines (tests/k8s/cluster_sim.py); the operator reads them through pods/log.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from k8s.harness import EmulatedCluster
from k8s.operator_proc import OperatorProcess
from k8s.scenarios import condition, experiment, experiment_events, get_experiment, wait_phase

pytestmark = pytest.mark.timeout(240)

KUBECTL = pathlib.Path(sys.executable).with_name("kubectl")
CONTRACT_KEYS = {"state", "runId", "epoch", "epochs", "step", "steps", "loss", "learningRate", "imagesPerSecond",
                 "dataWaitFraction", "etaSeconds", "validation", "validationHistory", "gpus", "mlflow", "updatedAt"}
GAUGES = ("lanex_training_progress_ratio", "lanex_training_epoch", "lanex_training_images_per_second",
          "lanex_training_loss", "lanex_training_validation_accuracy", "lanex_training_eta_seconds",
          "lanex_training_data_wait_ratio", "lanex_training_gpu_utilization_percent", "lanex_training_stalled")


def progress(cluster: EmulatedCluster, name: str) -> dict:
    return (get_experiment(cluster, name).get("status") or {}).get("progress") or {}


def series(metrics: str, name: str) -> list[str]:
    """The metric families (name only) that have a sample labelled with experiment `name`."""
    return sorted({line.split("{", 1)[0] for line in metrics.splitlines()
                   if not line.startswith("#") and f'experiment="{name}"' in line})


def declared_series(metrics: str) -> list[str]:
    """Every series name the exposition declares (`# TYPE`), as PromQL names them: a histogram `x` is
    `x_bucket`/`x_sum`/`x_count`, the rest as declared (labelled ones have samples only once used)."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count")}
    names = []
    for line in metrics.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names += [name + suffix for suffix in suffixes.get(kind, ("",))]
    return names


def wait_step(cluster: EmulatedCluster, name: str, above: int, timeout: float = 30) -> dict:
    return cluster.wait_for(lambda: (progress(cluster, name).get("step") or 0) > above and progress(cluster, name),
                            timeout=timeout, message=f"{name}'s progress past step {above}")


def slow_training(cluster: EmulatedCluster, steps_per_epoch: int, step_seconds: float) -> None:
    cluster.knobs.steps_per_epoch = steps_per_epoch
    cluster.knobs.step_seconds = step_seconds
    cluster.knobs.reported_step_seconds = 60.0  # what a TR-4896-sized step reports: ETAs in hours


def test_a_training_held_midway_shows_its_progress_advancing_in_status(api_server, running_operator):
    slow_training(api_server, steps_per_epoch=10, step_seconds=0.15)
    api_server.knobs.val_accuracy["watched"] = [0.61, 0.83]
    api_server.knobs.paused.add("MPIJob.running/watched")  # held at the midway step, its logs open
    api_server.create(experiment("watched", spec={"training": {"epochs": 2, "gpusPerWorker": 1}}))

    first = wait_step(api_server, "watched", 0)
    second = wait_step(api_server, "watched", first["step"])
    assert second["step"] > first["step"] and second["observedAt"] >= first["observedAt"]
    assert set(second) == CONTRACT_KEYS | {"observedAt"}  # every key of the contract, nulls kept
    assert (second["epochs"], second["steps"], second["state"]) == (2, 20, "training")
    assert [gpu["rank"] for gpu in second["gpus"]] == [0, 1]

    held = api_server.wait_for(lambda: progress(api_server, "watched").get("step") == 10
                               and len(progress(api_server, "watched")["validationHistory"]) == 1
                               and progress(api_server, "watched"), message="the progress at the midway step")
    exp = get_experiment(api_server, "watched")
    assert exp["status"]["phase"] == "Training"
    assert held["validation"] == held["validationHistory"][0] and held["validation"]["accuracy"] == 0.61
    assert exp["status"]["progressSummary"] == "1/2 50%" and exp["status"]["eta"] == "10m00s"

    # kubectl's server-side columns show the same, and the operator's gauges carry the run.
    table = subprocess.run([str(KUBECTL), "--kubeconfig", str(api_server.kubeconfig), "get", "lx", "watched"],
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "ETA", "WORKERS", "ACCURACY", "SNAPSHOT", "AGE"]
    assert row.split()[:6] == ["watched", "Training", "1/2", "50%", "10m00s", "2"]
    described = subprocess.run([str(pathlib.Path(sys.executable).with_name("lanex")), "describe", "watched"],
                               env={**os.environ, "KUBECONFIG": str(api_server.kubeconfig)}, capture_output=True,
                               text=True, timeout=60)
    assert described.returncode == 0, described.stderr
    assert "  State:       training (1/2 50%, epoch 1/2, step 10/20)" in described.stdout
    assert "  Validation:  epoch 1: accuracy 0.6100" in described.stdout and "  ETA:         10m00s" in described.stdout
    metrics = running_operator.metrics()
    assert series(metrics, "watched") == sorted(GAUGES)
    assert 'lanex_training_progress_ratio{experiment="watched",namespace="default"} 0.5' in metrics
    assert 'lanex_training_validation_accuracy{experiment="watched",namespace="default"} 0.61' in metrics

    api_server.knobs.paused.discard("MPIJob.running/watched")
    done = wait_phase(api_server, "watched", ["Succeeded"], timeout=40)
    final = api_server.wait_for(lambda: progress(api_server, "watched").get("state") == "finished"
                                and get_experiment(api_server, "watched"), message="the launcher's last record")
    assert done["status"]["phase"] == "Succeeded"
    assert [v["accuracy"] for v in final["status"]["progress"]["validationHistory"]] == [0.61, 0.83]
    assert (final["status"]["progressSummary"], final["status"]["eta"]) == ("2/2 100%", "done")
    api_server.wait_for(lambda: series(running_operator.metrics(), "watched") == [],
                        message="the gauges of a finished experiment to go")


def test_the_gauges_of_a_training_experiment_go_when_it_is_deleted(api_server, running_operator):
    slow_training(api_server, steps_per_epoch=200, step_seconds=0.2)
    api_server.create(experiment("dropped"))
    wait_step(api_server, "dropped", 0)
    api_server.wait_for(lambda: "lanex_training_progress_ratio" in series(running_operator.metrics(), "dropped"))
    api_server.delete("laneexperiments", "dropped", "default")
    api_server.wait_for(lambda: api_server.get("laneexperiments", "dropped", "default") is None)
    api_server.wait_for(lambda: series(running_operator.metrics(), "dropped") == [],
                        message="the gauges of a deleted experiment to go")


def test_a_launcher_that_stops_logging_is_stalled_and_recovers_when_it_goes_on(api_server, running_operator):
    slow_training(api_server, steps_per_epoch=40, step_seconds=0.1)
    api_server.create(experiment("hung", spec={"training": {"stallTimeoutSeconds": 2}}))
    wait_step(api_server, "hung", 2)
    api_server.knobs.stall_logging.add("hung")  # the launcher hangs: no more lines, the MPIJob stays Running
    stalled = api_server.wait_for(lambda: condition(get_experiment(api_server, "hung"), "Stalled")
                                  if any(c["type"] == "Stalled" for c in get_experiment(api_server, "hung")["status"]
                                         .get("conditions") or []) else None, message="the Stalled condition")
    last = progress(api_server, "hung")
    assert (stalled["status"], stalled["reason"]) == ("True", "NoProgress")
    assert f"step {last['step']}/40" in stalled["message"] and last["observedAt"] in stalled["message"]
    assert get_experiment(api_server, "hung")["status"]["phase"] == "Training"
    # The Event is posted just after the status write that carries the condition: wait for it.
    warnings = api_server.wait_for(lambda: [e for e in experiment_events(api_server, "hung") if e["reason"] == "Stalled"],
                                   message="the Stalled Warning Event")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert 'lanex_training_stalled{experiment="hung",namespace="default"} 1.0' in running_operator.metrics()

    api_server.knobs.stall_logging.discard("hung")  # it goes on where it stopped
    cleared = api_server.wait_for(lambda: condition(get_experiment(api_server, "hung"), "Stalled")["status"] == "False"
                                  and condition(get_experiment(api_server, "hung"), "Stalled"),
                                  message="Stalled to clear")
    assert cleared["reason"] == "ProgressResumed"
    assert api_server.wait_for(lambda: any(e["reason"] == "ProgressResumed" for e in experiment_events(api_server, "hung")),
                               message="the ProgressResumed Event")
    assert wait_phase(api_server, "hung", ["Succeeded", "Failed"], timeout=40)["status"]["phase"] == "Succeeded"


def test_stall_action_restart_replaces_the_launcher_which_resumes_from_its_checkpoint(api_server, operator_factory):
    operator_factory({"LANEX_OPERATOR_DELETE_LAUNCHER_PODS": "true"})  # the chart's stallRestart.deleteLauncherPods
    slow_training(api_server, steps_per_epoch=10, step_seconds=0.1)
    api_server.create(experiment("revived", spec={"training": {"epochs": 2, "stallTimeoutSeconds": 2,
                                                               "stallAction": "Restart"}}))
    wait_step(api_server, "revived", 12)  # in epoch 2: the checkpoint is the end of epoch 1
    api_server.knobs.stall_logging.add("revived")
    restarted = api_server.wait_for(
        lambda: next((c for c in get_experiment(api_server, "revived")["status"].get("conditions") or []
                      if c["type"] == "Stalled" and c["reason"] == "LauncherRestarted"), None),
        message="the launcher restart")
    assert restarted["status"] == "False" and "deleted launcher pod revived-train-launcher-" in restarted["message"]
    reasons = api_server.wait_for(  # Events are posted just after the status write
        lambda: (lambda found: found if {"Stalled", "LauncherRestarted"} <= set(found) else None)(
            [e["reason"] for e in experiment_events(api_server, "revived")]),
        message="the Stalled and LauncherRestarted Events")
    assert reasons.index("Stalled") < reasons.index("LauncherRestarted")
    # The new launcher resumed from the epoch-1 checkpoint (step 10) and the run finished.
    assert wait_phase(api_server, "revived", ["Succeeded", "Failed"], timeout=40)["status"]["phase"] == "Succeeded"
    assert api_server.sim.launcher_restarts == {"revived-train": 1}
    mpijob = api_server.get("mpijobs", "revived-train", "default")
    assert mpijob["status"]["replicaStatuses"]["Launcher"] == {"succeeded": 1, "failed": 1}
    launchers = api_server.list("pods", "default", label_selector="training.kubeflow.org/job-name=revived-train,"
                                                                   "training.kubeflow.org/job-role=launcher")
    log = api_server.call(lambda: bytes(api_server.emulator._pod_logs[
        ("default", launchers[0]["metadata"]["name"], "launcher")]).decode())
    assert "resuming from checkpoint of epoch 1 (step 10/20)" in log


def test_stall_action_restart_without_the_charts_grant_reports_once_and_deletes_nothing(api_server, running_operator):
    # The default install does not grant delete on pods (stallRestart.deleteLauncherPods: false).
    slow_training(api_server, steps_per_epoch=10, step_seconds=0.1)
    api_server.create(experiment("kept", spec={"training": {"epochs": 2, "stallTimeoutSeconds": 1,
                                                            "stallAction": "Restart"}}))
    wait_step(api_server, "kept", 4)
    api_server.knobs.stall_logging.add("kept")
    refused = api_server.wait_for(
        lambda: next((c for c in get_experiment(api_server, "kept")["status"].get("conditions") or []
                      if c["type"] == "Stalled" and c["reason"] == "RestartNotAllowed"), None),
        message="Stalled/RestartNotAllowed")
    assert refused["status"] == "True"
    assert refused["message"].endswith("not restarted: the operator is not allowed to delete pods (chart value "
                                       "stallRestart.deleteLauncherPods is false: set it to true to grant it, or set "
                                       "stallAction None)"), refused["message"]
    api_server.wait_for(lambda: [e for e in experiment_events(api_server, "kept") if e["reason"] == "RestartNotAllowed"],
                        message="the RestartNotAllowed Warning Event")
    # A late progress read may end the first stall (ProgressResumed) before the real one: let that settle, then
    # passes (every second at least) must add nothing: each stall is said once.
    reasons: list[str] = []
    for _ in range(5):
        before, reasons = reasons, [e["reason"] for e in experiment_events(api_server, "kept")]
        if reasons == before:
            break
        time.sleep(3)
    assert reasons == before, reasons
    stalls = [r for r in reasons if r in ("Stalled", "RestartNotAllowed", "ProgressResumed")]
    assert stalls[-2:] == ["Stalled", "RestartNotAllowed"] and "RestartNotAllowed RestartNotAllowed" not in " ".join(
        stalls), stalls
    assert condition(get_experiment(api_server, "kept"), "Stalled")["reason"] == "RestartNotAllowed"
    assert not [call for call in api_server.calls() if call.resource == "pods" and call.verb == "delete"]
    assert api_server.sim.launcher_restarts == {}


def test_a_hundred_trainings_at_once_keep_progress_reads_within_the_request_budget(tmp_path):
    rate, interval, count = 20.0, 0.2, 100
    with EmulatedCluster(tmp_path) as cluster:
        slow_training(cluster, steps_per_epoch=150, step_seconds=0.4)  # a minute of training each
        operator = OperatorProcess(cluster.kubeconfig, tmp_path, {
            "LANEX_OPERATOR_PROGRESS_INTERVAL_SECONDS": str(interval),
            "LANEX_OPERATOR_PROGRESS_REQUESTS_PER_SECOND": str(rate)}).start()
        try:
            names = [f"many-{index:03d}" for index in range(count)]
            for name in names:
                cluster.create(experiment(name))
            cluster.wait_for(lambda: all(progress(cluster, name).get("step") for name in names), timeout=150,
                             interval=0.5, message="every experiment's first progress")
            start = time.monotonic()
            time.sleep(6)
            end = time.monotonic()
            assert all(get_experiment(cluster, name)["status"]["phase"] == "Training" for name in names)
        finally:
            operator.stop()
        reads = sorted(call.at for call in cluster.calls() if call.user_agent.endswith(" progress"))
    window = [at for at in reads if start <= at <= end]
    # Unthrottled, 100 experiments read every 0.2 s would send >= 500 log reads a second.
    assert len(window) <= rate * (end - start) + rate, (len(window), end - start)
    busiest = max(sum(1 for at in window if t <= at < t + 1.0) for t in window)
    # A full bucket (rate) plus a second's refill, and some slack: these are arrival times at a busy
    # emulator, where requests sent apart can arrive together.
    assert busiest <= 2.5 * rate, busiest
    assert len(window) >= 0.5 * rate * (end - start)  # the budget is used, not starved


def test_every_metric_the_dashboard_queries_is_exported_by_the_operator_or_dcgm(api_server, running_operator):
    dashboard = json.loads((pathlib.Path(__file__).resolve().parents[1] / "charts" / "lanex-operator" /
                            "dashboards" / "lanex.json").read_text())
    slow_training(api_server, steps_per_epoch=3, step_seconds=0.1)
    api_server.knobs.paused.add("MPIJob.running/queried")  # held after the first validation
    api_server.create(experiment("queried", spec={"training": {"epochs": 2, "gpusPerWorker": 1}}))
    api_server.wait_for(lambda: progress(api_server, "queried").get("validation"))
    metrics = api_server.wait_for(lambda: "lanex_training_validation_accuracy{" in running_operator.metrics()
                                  and running_operator.metrics())
    exported = set(declared_series(metrics))
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets") or []
               for name in re.findall(r"\b(lanex_[a-z_]+|DCGM_[A-Z_]+)\b", target["expr"])}
    assert {name for name in queried if name.startswith("DCGM_")} == {"DCGM_FI_DEV_GPU_UTIL"}
    assert {name for name in queried if name.startswith("lanex_")} - exported == set(), sorted(exported)


def test_kubectl_and_lanex_get_watch_follow_a_run_epoch_by_epoch(api_server, running_operator):
    slow_training(api_server, steps_per_epoch=5, step_seconds=0.25)
    env_kubeconfig = str(api_server.kubeconfig)
    lanex_bin = pathlib.Path(sys.executable).with_name("lanex")
    watchers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "KUBECONFIG": env_kubeconfig})
                for command in ([str(KUBECTL), "get", "lx", "-w"], [str(lanex_bin), "get", "-w"])]
    try:  # both are watching before the experiment exists
        header = watchers[1].stdout.readline()
        api_server.wait_for(lambda: any(call.verb == "watch" and call.resource == "laneexperiments"
                                        and call.user_agent.startswith("kubectl") for call in api_server.calls()))
        api_server.create(experiment("followed", spec={"training": {"epochs": 3}}))
        wait_phase(api_server, "followed", ["Succeeded"], timeout=60)
        time.sleep(1.0)
    finally:
        outputs = []
        for watcher in watchers:
            watcher.terminate()
            out, err = watcher.communicate(timeout=10)
            outputs.append((out, err))
    for out, err in outputs:
        lines = [line.split() for line in out.splitlines() if line.startswith("followed")]
        assert lines, (out, err)
        progressed = [cells[2] for cells in lines if cells[1] == "Training" and len(cells) > 3 and "/" in cells[2]]
        assert {"1/3", "2/3", "3/3"} <= set(progressed), out  # epoch by epoch, as the run goes
        assert lines[-1][:5] == ["followed", "Succeeded", "3/3", "100%", "done"], out
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "ETA", "WORKERS", "ACCURACY", "SNAPSHOT", "AGE"]
    rows = [line for line in outputs[1][0].splitlines() if line.startswith("followed")]
    assert len(rows) == len(set(line.rsplit(None, 1)[0] for line in rows))  # a row only when something changed


def test_a_restarted_operator_goes_on_reading_progress_from_where_status_is(api_server, operator_factory):
    slow_training(api_server, steps_per_epoch=30, step_seconds=0.15)
    first_operator = operator_factory()
    api_server.create(experiment("survivor"))
    before = wait_step(api_server, "survivor", 3)
    first_operator.kill()  # SIGKILL: nothing in memory survives
    operator_factory()
    after = wait_step(api_server, "survivor", before["step"], timeout=40)
    assert after["runId"] == before["runId"] and after["observedAt"] >= before["observedAt"]
    assert wait_phase(api_server, "survivor", ["Succeeded", "Failed"], timeout=60)["status"]["phase"] == "Succeeded"
    assert not any(c["type"] == "Stalled" for c in get_experiment(api_server, "survivor")["status"]["conditions"])
