"""Storage tier in the whole lifecycle: the real operator moves the dataset volume's ANF pool around training.

The operator runs as a subprocess against the emulated cluster and, through the real
azure-mgmt-netapp client and `DefaultAzureCredential` (workload identity), against the HTTPS ARM
emulator. Every ARM request is timestamped on the same clock as the cluster emulator's request log,
so the scenarios assert the order that matters: the volume reaches Premium before the MPIJob is
created and goes back to Standard only after the MPIJob succeeded, exactly once each, even across
operator restarts; and a move that Azure refuses never stops training.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from azure_arm.certs import TlsFiles, make_tls_files
from azure_arm.server import ArmEmulator, ArmState, Recorded
from k8s.emulator import ApiCall, FaultPlan
from k8s.harness import EmulatedCluster
from k8s.scenarios import child_counts, condition, experiment, experiment_events, get_experiment, wait_phase

pytestmark = pytest.mark.timeout(60)

POOLS = {"pool-std": "Standard", "pool-prem": "Premium", "pool-ultra": "Ultra"}
TIERED = {"storage": {"serviceLevel": "Standard", "trainingServiceLevel": "Premium"}}


class TimedRequests(list):  # type: ignore[type-arg]
    """The ARM emulator's request log, with the time.monotonic() of each append (the cluster's clock too)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def append(self, item: Recorded) -> None:
        self.at.append(time.monotonic())
        super().append(item)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("arm-tls"))


@pytest.fixture(scope="module")
def arm_server(tls: TlsFiles) -> Iterator[ArmEmulator]:
    server = ArmEmulator(tls).start()
    yield server
    server.stop()


@pytest.fixture
def arm(arm_server: ArmEmulator) -> ArmState:
    """A fresh NetApp account with one pool per level; volumes are added once the PV exists."""
    return arm_server.reset(pools=dict(POOLS), requests=TimedRequests())


@pytest.fixture
def tier_env(arm: ArmState, arm_server: ArmEmulator, tls: TlsFiles, tmp_path: Path) -> dict[str, str]:
    return {**arm_server.operator_env(tls, tmp_path / "azure-identity-token"),
            "LANEX_ANF_MOVE_TIMEOUT_SECONDS": "20"}


def start_tiered(api_server: EmulatedCluster, arm: ArmState, name: str) -> str:
    """Create a tiered experiment; put the ANF volume behind its new PV in the Standard pool; return the PV."""
    api_server.knobs.paused.add(f"Job/{name}")  # the lifecycle waits in Downloading until ARM knows the volume
    api_server.create(experiment(name, spec=TIERED))
    pvc = api_server.wait_for(lambda: _bound(api_server, f"{name}-data"), timeout=30,
                              message=f"PVC {name}-data Bound")
    volume = pvc["spec"]["volumeName"]
    pv = api_server.get("persistentvolumes", volume)
    assert pv is not None and pv["spec"]["csi"]["volumeAttributes"]["internalName"] == volume
    arm.volumes[volume] = "pool-std"
    api_server.knobs.paused.discard(f"Job/{name}")
    return volume


def _bound(api_server: EmulatedCluster, claim: str) -> dict[str, Any] | None:
    pvc = api_server.get("persistentvolumeclaims", claim, "default")
    return pvc if pvc and (pvc.get("status") or {}).get("phase") == "Bound" else None


def pool_changes(arm: ArmState) -> list[tuple[float, Recorded]]:
    """(arrival time, request) of every poolChange POST."""
    return [(at, r) for at, r in zip(arm.requests.at, arm.requests) if r.route == "poolChange"]


def target_pool(request: Recorded) -> str:
    return str(request.body["newPoolResourceId"]).rsplit("/", 1)[-1]


def mpijob_calls(api_server: EmulatedCluster, verb: str, resource: str = "mpijobs") -> list[ApiCall]:
    return [c for c in api_server.calls() if c.resource == resource and c.verb == verb and c.status < 300]


def moves_of(exp: dict[str, Any]) -> list[dict[str, Any]]:
    return list((exp.get("status") or {}).get("storageMoves") or [])


def test_training_tier_moves_volume_up_before_the_mpijob_and_back_after_it(api_server, operator_factory, arm,
                                                                        tier_env):
    operator = operator_factory(tier_env)
    volume = start_tiered(api_server, arm, "tier-a")

    exp = wait_phase(api_server, "tier-a", ["Succeeded", "Failed"], timeout=30)

    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert arm.volumes[volume] == "pool-std"  # back where it started
    (up_at, up), (back_at, back) = pool_changes(arm)
    assert up.path.endswith(f"/capacityPools/pool-std/volumes/{volume}/poolChange") and target_pool(up) == "pool-prem"
    assert back.path.endswith(f"/capacityPools/pool-prem/volumes/{volume}/poolChange")
    assert target_pool(back) == "pool-std"
    # Premium before the MPIJob exists: the move up was polled to its end and checked before the creation ...
    (created,) = mpijob_calls(api_server, "create")
    timed = list(zip(arm.requests.at, arm.requests))
    polls = [at for at, r in timed if r.route == "operation" and up_at < at < back_at]
    checked = next(at for at, r in timed if at > up_at and r.route == "volume" and "/pool-prem/" in r.path)
    assert polls and up_at < max(polls) < checked < created.at
    # ... and back to Standard only after the MPIJob's Succeeded condition was written.
    mpijob = api_server.list("mpijobs", "default", label_selector="lanex.dev/experiment=tier-a")[0]
    assert condition(mpijob, "Succeeded")["status"] == "True"
    succeeded_write = mpijob_calls(api_server, "patch", "mpijobs/status")[-1]
    assert created.at < succeeded_write.at < back_at

    up_move, back_move = moves_of(exp)
    assert {k: up_move[k] for k in ("from", "to", "result")} == {"from": "Standard", "to": "Premium",
                                                                 "result": "Succeeded"}
    assert {k: back_move[k] for k in ("from", "to", "result")} == {"from": "Premium", "to": "Standard",
                                                                   "result": "Succeeded"}
    assert up_move["start"] <= up_move["end"] <= mpijob["metadata"]["creationTimestamp"]
    assert mpijob["metadata"]["creationTimestamp"] <= back_move["start"] <= back_move["end"]
    tier = condition(exp, "StorageTier")
    assert (tier["status"], tier["reason"]) == ("True", "AtStandard"), tier
    changed = api_server.wait_for(lambda: (lambda found: found if len(found) >= 2 else None)(
        [e for e in experiment_events(api_server, "tier-a") if e["reason"] == "StorageTierChanged"]),
        message="both StorageTierChanged Events")
    assert [e["type"] for e in changed] == ["Normal", "Normal"]
    assert f"moved ANF volume {volume} from Standard to Premium" in changed[0]["message"]
    assert f"moved ANF volume {volume} from Premium to Standard" in changed[1]["message"]
    assert condition(exp, "Trained")["status"] == "True" and condition(exp, "Snapshotted")["status"] == "True"
    metrics = operator.metrics()
    assert 'lanex_storage_pool_changes_total{result="Succeeded"} 2.0' in metrics
    assert 'lanex_storage_pool_change_seconds_count{result="Succeeded"} 2.0' in metrics
    assert {r.authorization for r in arm.requests if r.route != "token"} == {f"Bearer {arm.token}"}


def test_permission_denied_pool_change_warns_and_training_goes_on_at_standard(api_server, operator_factory, arm,
                                                                             tier_env):
    arm.denied_actions.add("poolChange")
    operator = operator_factory(tier_env)
    volume = start_tiered(api_server, arm, "tier-403")

    exp = wait_phase(api_server, "tier-403", ["Succeeded", "Failed"], timeout=30)

    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert child_counts(api_server, "tier-403")["mpijobs"] == 1
    assert len(pool_changes(arm)) == 1  # the refused move up, and no move back: nothing moved
    assert arm.volumes[volume] == "pool-std"
    tier = condition(exp, "StorageTier")
    assert (tier["status"], tier["reason"]) == ("False", "PermissionDenied"), tier
    assert "403 AuthorizationFailed" in tier["message"]
    assert "poolChange/action" in tier["message"] and "stays at Standard" in tier["message"]
    (move,) = moves_of(exp)
    assert {k: move[k] for k in ("from", "to", "result")} == {"from": "Standard", "to": "Premium",
                                                              "result": "Failed: PermissionDenied"}
    assert move["start"] <= move["end"]
    warnings = api_server.wait_for(lambda: [e for e in experiment_events(api_server, "tier-403")
                                            if e["reason"] == "StorageTierFailed"], message="a StorageTierFailed Event")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert "403 AuthorizationFailed" in warnings[0]["message"]
    assert 'lanex_storage_pool_changes_total{result="Failed"} 1.0' in operator.metrics()


def test_failed_training_still_moves_the_volume_back_before_the_experiment_fails(api_server, operator_factory, arm,
                                                                                tier_env):
    api_server.knobs.fail_mpijobs["tier-fail"] = "RuntimeError: CUDA out of memory (rank 1)"
    operator_factory(tier_env)
    volume = start_tiered(api_server, arm, "tier-fail")

    exp = wait_phase(api_server, "tier-fail", ["Succeeded", "Failed"], timeout=30)

    assert (exp["status"]["phase"], exp["status"]["reason"]) == ("Failed", "TrainingFailed"), exp["status"]
    assert [target_pool(r) for _, r in pool_changes(arm)] == ["pool-prem", "pool-std"]
    assert arm.volumes[volume] == "pool-std"
    failed_write = mpijob_calls(api_server, "patch", "mpijobs/status")[-1]
    assert failed_write.at < pool_changes(arm)[1][0]
    assert [(m["from"], m["to"], m["result"]) for m in moves_of(exp)] == [
        ("Standard", "Premium", "Succeeded"), ("Premium", "Standard", "Succeeded")]
    assert (condition(exp, "StorageTier")["status"], condition(exp, "StorageTier")["reason"]) == ("True",
                                                                                               "AtStandard")


def test_operator_restarts_after_the_move_up_and_after_training_move_each_way_once(api_server, operator_factory,
                                                                                  arm, tier_env):
    name = "tier-r"
    # Hold the experiment between "moved up" and "MPIJob created": creating the MPIJob answers 500.
    creating = FaultPlan(error_rate=1.0, applies=lambda call: call.resource == "mpijobs" and call.verb == "create")
    api_server.set_faults(creating)
    api_server.knobs.paused.add(f"MPIJob/{name}")
    operator = operator_factory(tier_env)
    volume = start_tiered(api_server, arm, name)
    api_server.wait_for(lambda: creating.injected["error"] >= 2, message="MPIJob creation refused twice")
    exp = get_experiment(api_server, name)
    assert [m["result"] for m in moves_of(exp)] == ["Succeeded"] and arm.volumes[volume] == "pool-prem"

    operator.kill()
    api_server.set_faults(None)
    operator.start()
    api_server.wait_for(lambda: child_counts(api_server, name)["mpijobs"] == 1, message="the MPIJob")
    assert len(pool_changes(arm)) == 1  # the restart did not move the volume again

    # Hold it between "MPIJob finished" and "moved back": the experiment's status writes answer 500.
    writing = FaultPlan(error_rate=1.0, applies=lambda call: call.resource == "laneexperiments/status")
    api_server.set_faults(writing)
    api_server.knobs.paused.discard(f"MPIJob/{name}")
    api_server.wait_for(lambda: _mpijob_succeeded(api_server, name), message="the MPIJob to succeed")
    refused = writing.injected["error"]
    api_server.wait_for(lambda: writing.injected["error"] >= refused + 2, message="status writes after success")
    assert len(pool_changes(arm)) == 1 and arm.volumes[volume] == "pool-prem"

    operator.kill()
    api_server.set_faults(None)
    operator.start()
    exp = wait_phase(api_server, name, ["Succeeded", "Failed"], timeout=30)

    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert [target_pool(r) for _, r in pool_changes(arm)] == ["pool-prem", "pool-std"]
    assert arm.volumes[volume] == "pool-std"
    assert [(m["from"], m["to"], m["result"]) for m in moves_of(exp)] == [
        ("Standard", "Premium", "Succeeded"), ("Premium", "Standard", "Succeeded")]
    assert child_counts(api_server, name) == {"persistentvolumeclaims": 1, "jobs": 1, "mpijobs": 1,
                                              "volumesnapshots": 1}
    assert (condition(exp, "StorageTier")["status"], condition(exp, "StorageTier")["reason"]) == ("True",
                                                                                               "AtStandard")
    changed = api_server.wait_for(lambda: (lambda found: found if len(found) >= 2 else None)(
        [e for e in experiment_events(api_server, name) if e["reason"] == "StorageTierChanged"]),
        message="both StorageTierChanged Events")
    assert len(changed) == 2


def _mpijob_succeeded(api_server: EmulatedCluster, name: str) -> bool:
    jobs = api_server.list("mpijobs", "default", label_selector=f"lanex.dev/experiment={name}")
    return bool(jobs) and any(c.get("type") == "Succeeded" and c.get("status") == "True"
                              for c in (jobs[0].get("status") or {}).get("conditions") or [])


def test_operator_without_pools_warns_which_helm_value_is_missing_and_trains(api_server, running_operator):
    api_server.create(experiment("tier-none", spec=TIERED))

    exp = wait_phase(api_server, "tier-none", ["Succeeded", "Failed"], timeout=30)

    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    tier = condition(exp, "StorageTier")
    assert (tier["status"], tier["reason"]) == ("False", "PoolNotConfigured"), tier
    assert "Helm value storage.tierPools.Premium" in tier["message"]
    assert "LANEX_ANF_POOL_PREMIUM" in tier["message"] and "training goes on" in tier["message"]
    assert [(m.get("from"), m["to"], m["result"]) for m in moves_of(exp)] == [
        (None, "Premium", "Failed: PoolNotConfigured")]  # and no move back: nothing moved
    warnings = api_server.wait_for(lambda: [e for e in experiment_events(api_server, "tier-none")
                                            if e["reason"] == "StorageTierFailed"], message="a StorageTierFailed Event")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert 'lanex_storage_pool_changes_total{result="Failed"} 1.0' in running_operator.metrics()
