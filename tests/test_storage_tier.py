"""Storage tier: the real azure-mgmt-netapp client moves a volume between pools of an emulated ARM.

The emulator (tests/azure_arm) serves HTTPS on 127.0.0.1 with a certificate made at test time and
records every request, so each scenario asserts what Azure would have received (path, api-version,
body), where the volume ended up, the MoveRecord the operator writes into status, and the metrics.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

import pytest
from azure.mgmt.netapp import NetAppManagementClient
from prometheus_client import CollectorRegistry

from azure_arm.certs import TlsFiles, make_tls_files
from azure_arm.server import API_VERSION, ArmEmulator, ArmError, ArmState, FakeCredential
from lanex_operator.api.status import Condition, StorageMove
from lanex_operator.azure.volume import (
    VOLUME_ID_ANNOTATION,
    TierConfigError,
    TierSettings,
    VolumeMappingError,
    bound_pv_name,
    volume_ref,
    volume_resource_id,
)
from lanex_operator.azure.storage_tier import (
    MoveResult,
    PoolMover,
    Reason,
    StorageTierMetrics,
    apply_tier,
    default_client_factory,
    pending_move_status,
)

VOLUME = "pvc-5d3c7b1e-8a4f-4f5e-9d2a-0c1b2a3d4e5f"
POOLS = {"pool-std": "Standard", "pool-prem": "Premium", "pool-ultra": "Ultra"}


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("arm-tls"))


@pytest.fixture(scope="module")
def emulator(tls: TlsFiles):
    server = ArmEmulator(tls).start()
    yield server
    server.stop()


@pytest.fixture
def arm(emulator: ArmEmulator) -> ArmState:
    """A fresh account: three pools, the dataset volume in the Standard pool."""
    return emulator.reset(pools=dict(POOLS), volumes={VOLUME: "pool-std"})


@pytest.fixture
def settings(arm: ArmState, emulator: ArmEmulator) -> TierSettings:
    return TierSettings(pools={level: arm.pool_id(pool) for pool, level in POOLS.items()},
                        arm_endpoint=emulator.base_url, move_timeout_seconds=10, poll_interval_seconds=0.02,
                        retry_attempts=3, retry_delay_seconds=0.01, retry_max_delay_seconds=0.05)


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def client_factory(tls: TlsFiles, credential: FakeCredential):
    """Like the production factory (azure-core retries off), with the fake credential and the test CA."""
    def factory(settings: TierSettings, subscription_id: str) -> NetAppManagementClient:
        return NetAppManagementClient(credential, subscription_id, base_url=settings.arm_endpoint,
                                      connection_verify=str(tls.ca_cert), retry_total=0,
                                      polling_interval=settings.poll_interval_seconds)
    return factory


@pytest.fixture
def metrics() -> StorageTierMetrics:
    return StorageTierMetrics(CollectorRegistry())


def trident_pv(internal_name: str = VOLUME, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A PV as Trident's CSI driver provisions it on Azure NetApp Files."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": VOLUME, "annotations": {"pv.kubernetes.io/provisioned-by": "csi.trident.netapp.io",
                                                         **(annotations or {})}},
            "spec": {"accessModes": ["ReadWriteMany"], "capacity": {"storage": "100Gi"},
                     "claimRef": {"kind": "PersistentVolumeClaim", "name": "lane-exp-data", "namespace": "ml"},
                     "storageClassName": "azurenetappfiles", "persistentVolumeReclaimPolicy": "Delete",
                     "csi": {"driver": "csi.trident.netapp.io", "volumeHandle": VOLUME,
                             "volumeAttributes": {"backendUUID": "a1b2c3d4-0000-4000-8000-000000000001",
                                                  "internalName": internal_name, "name": VOLUME,
                                                  "protocol": "file",
                                                  "storage.kubernetes.io/csiProvisionerIdentity":
                                                      "1700000000000-trident"}}}}


def pvc(annotations: dict[str, str] | None = None, volume_name: str | None = VOLUME) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "storageClassName": "azurenetappfiles",
                            "resources": {"requests": {"storage": "100Gi"}}}
    if volume_name:
        spec["volumeName"] = volume_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "lane-exp-data", "namespace": "ml", "annotations": annotations or {}}, "spec": spec}


def sample(metrics: StorageTierMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def routes(arm: ArmState) -> list[str]:
    return [r.route for r in arm.requests]


# --- successful moves -----------------------------------------------------------------------------


def test_training_tier_moves_volume_to_premium_pool_and_records_the_move(arm, settings, client_factory, credential,
                                                                       metrics):
    before = datetime.now(timezone.utc)
    record = apply_tier(trident_pv(), "Premium", settings, client_factory, pvc=pvc(), metrics=metrics)

    assert record.result is MoveResult.SUCCEEDED, record.message
    assert (record.from_level, record.to_level, record.attempts) == ("Standard", "Premium", 1)
    assert before <= record.start <= record.end <= datetime.now(timezone.utc)
    assert record.volume_id == arm.pool_id("pool-prem") + f"/volumes/{VOLUME}"
    assert arm.volumes[VOLUME] == "pool-prem"  # the emulated volume really moved

    posts = arm.of("poolChange")
    assert len(posts) == 1
    assert posts[0].path == (f"/subscriptions/{arm.subscription}/resourceGroups/{arm.resource_group}/providers/"
                             f"Microsoft.NetApp/netAppAccounts/{arm.account}/capacityPools/pool-std/volumes/{VOLUME}"
                             "/poolChange")
    assert posts[0].body == {"newPoolResourceId": arm.pool_id("pool-prem")}
    assert {r.api_version for r in arm.requests} == {API_VERSION}
    assert {r.authorization for r in arm.requests} == {"Bearer lanex-test-token"}
    assert credential.scopes and set(credential.scopes) == {("https://management.azure.com/.default",)}
    # Locate, start, poll the Azure-AsyncOperation until Succeeded, final Location GET, verify.
    assert routes(arm)[:2] == ["volume", "poolChange"]
    polls = arm.of("operation")
    assert len(polls) == arm.lro_polls + 2
    assert polls[-1].query.get("operationResultResponseType") == ["Location"]
    assert arm.requests[-1].route == "volume" and "/capacityPools/pool-prem/" in arm.requests[-1].path

    pending = StorageMove.model_validate(pending_move_status("Premium", now=record.start))
    assert (pending.to, pending.result, pending.end) == ("Premium", "InProgress", None)
    status = StorageMove.model_validate(record.to_status())
    assert (status.from_level, status.to, status.result) == ("Standard", "Premium", "Succeeded")
    assert status.start is not None and status.end is not None and status.start <= status.end
    assert record.event()[:2] == ("Normal", "StorageTierChanged")
    condition = Condition.model_validate(record.condition())
    assert (condition.type, condition.status, condition.reason) == ("StorageTier", "True", "AtPremium")
    assert sample(metrics, "lanex_storage_pool_changes_total", result="Succeeded") == 1
    assert sample(metrics, "lanex_storage_pool_change_seconds_count", result="Succeeded") == 1


def test_volume_moves_up_for_training_and_back_afterwards(arm, settings, client_factory, metrics):
    up = apply_tier(trident_pv(), "Ultra", settings, client_factory, metrics=metrics)
    assert arm.volumes[VOLUME] == "pool-ultra"
    down = apply_tier(trident_pv(), "Standard", settings, client_factory, metrics=metrics)

    assert [(r.from_level, r.to_level, r.result) for r in (up, down)] == [
        ("Standard", "Ultra", MoveResult.SUCCEEDED), ("Ultra", "Standard", MoveResult.SUCCEEDED)]
    assert arm.volumes[VOLUME] == "pool-std"
    bodies = [r.body["newPoolResourceId"] for r in arm.of("poolChange")]
    assert bodies == [arm.pool_id("pool-ultra"), arm.pool_id("pool-std")]
    # The move back starts from the Ultra pool the volume sits in now.
    assert "/capacityPools/pool-ultra/volumes/" in arm.of("poolChange")[1].path
    assert sample(metrics, "lanex_storage_pool_changes_total", result="Succeeded") == 2


def test_volume_already_at_level_is_left_alone(arm, settings, client_factory, metrics):
    record = apply_tier(trident_pv(), "Standard", settings, client_factory, metrics=metrics)

    assert record.result is MoveResult.UNCHANGED and record.succeeded and not record.changed_anything
    assert record.from_level == "Standard"
    assert arm.of("poolChange") == []
    assert routes(arm) == ["volume"]
    assert sample(metrics, "lanex_storage_pool_changes_total", result="Unchanged") == 1
    assert sample(metrics, "lanex_storage_pool_change_seconds_count", result="Unchanged") == 0


def test_volume_in_an_unconfigured_pool_is_found_by_listing_the_account(arm, settings, client_factory):
    arm.pools["pool-legacy"] = "Standard"
    arm.volumes[VOLUME] = "pool-legacy"

    record = apply_tier(trident_pv(), "Premium", settings, client_factory)

    assert record.result is MoveResult.SUCCEEDED, record.message
    assert record.from_level == "Standard"
    assert "pools" in routes(arm)
    assert "/capacityPools/pool-legacy/volumes/" in arm.of("poolChange")[0].path
    assert arm.volumes[VOLUME] == "pool-prem"


def test_annotation_with_a_stale_pool_still_finds_the_volume(arm, settings, client_factory):
    stale = arm.pool_id("pool-ultra") + f"/volumes/{VOLUME}"  # written before an earlier move
    record = apply_tier(trident_pv(internal_name="ignored"), "Premium", settings, client_factory,
                        pvc=pvc({VOLUME_ID_ANNOTATION: stale}))

    assert record.result is MoveResult.SUCCEEDED, record.message
    volume_gets = [r.path for r in arm.of("volume")]
    assert "/capacityPools/pool-ultra/" in volume_gets[0] and "/capacityPools/pool-std/" in volume_gets[1]
    assert arm.volumes[VOLUME] == "pool-prem"


# --- failures -------------------------------------------------------------------------------------


def test_permission_denied_fails_at_once_and_keeps_the_level(arm, settings, client_factory, metrics):
    arm.denied_actions.add("poolChange")

    record = apply_tier(trident_pv(), "Premium", settings, client_factory, metrics=metrics)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.PERMISSION_DENIED, False)
    assert "403 AuthorizationFailed" in record.message and "poolChange/action" in record.message
    assert "stays at Standard" in record.message
    assert len(arm.of("poolChange")) == 1 and arm.volumes[VOLUME] == "pool-std"
    assert record.event()[:2] == ("Warning", "StorageTierFailed")
    condition = Condition.model_validate(record.condition())
    assert (condition.status, condition.reason) == ("False", "PermissionDenied")
    assert StorageMove.model_validate(record.to_status()).result == "Failed: PermissionDenied"
    assert sample(metrics, "lanex_storage_pool_changes_total", result="Failed") == 1


def test_missing_target_pool_is_not_found_and_names_the_pool(arm, settings, client_factory):
    settings = TierSettings(**{**settings.__dict__, "pools": {**settings.pools, "Premium": arm.pool_id("pool-gone")}})

    record = apply_tier(trident_pv(), "Premium", settings, client_factory)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.NOT_FOUND, False)
    assert "404 ResourceNotFound" in record.message and "pool-gone" in record.message
    assert len(arm.of("poolChange")) == 1 and arm.volumes[VOLUME] == "pool-std"


def test_conflicting_operation_is_retried_with_backoff_then_succeeds(arm, settings, client_factory):
    conflict = ArmError(409, "Conflict", "Another operation is in progress on the capacity pool.")
    arm.pool_change_errors = deque([conflict, conflict])

    record = apply_tier(trident_pv(), "Premium", settings, client_factory)

    assert record.result is MoveResult.SUCCEEDED, record.message
    assert record.attempts == 3 and len(arm.of("poolChange")) == 3
    assert record.from_level == "Standard" and arm.volumes[VOLUME] == "pool-prem"


def test_persistent_conflict_gives_up_after_the_attempts_as_retryable(arm, settings, client_factory, metrics):
    arm.pool_change_errors = deque([ArmError(409, "Conflict", "Another operation is in progress.")] * 5)

    record = apply_tier(trident_pv(), "Premium", settings, client_factory, metrics=metrics)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.CONFLICT, True)
    assert record.attempts == 3 and len(arm.of("poolChange")) == 3
    assert "409 Conflict" in record.message and "gave up after 3 attempts" in record.message
    assert arm.volumes[VOLUME] == "pool-std"
    assert sample(metrics, "lanex_storage_pool_changes_total", result="Failed") == 1


def test_retries_back_off_exponentially_up_to_the_cap(arm, settings, client_factory):
    arm.pool_change_errors = deque([ArmError(409, "Conflict", "Another operation is in progress.")] * 3)
    slept: list[float] = []
    patient = TierSettings(**{**settings.__dict__, "retry_attempts": 4, "retry_delay_seconds": 0.01,
                              "retry_max_delay_seconds": 0.03})
    client = client_factory(patient, arm.subscription)
    try:
        record = PoolMover(client, patient, sleep=slept.append).move(volume_ref(trident_pv(), patient), "Premium")
    finally:
        client.close()

    assert record.result is MoveResult.SUCCEEDED and record.attempts == 4, record.message
    assert slept == pytest.approx([0.01, 0.02, 0.03])


def test_throttling_and_server_errors_are_retried(arm, settings, client_factory):
    arm.pool_change_errors = deque([ArmError(429, "TooManyRequests", "Slow down."),
                                    ArmError(503, "ServiceUnavailable", "Try again.")])

    record = apply_tier(trident_pv(), "Premium", settings, client_factory)

    assert record.result is MoveResult.SUCCEEDED and record.attempts == 3, record.message


def test_failed_operation_reports_the_arm_error_and_is_not_retried(arm, settings, client_factory):
    arm.lro_outcome = "Failed"

    record = apply_tier(trident_pv(), "Premium", settings, client_factory)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.OPERATION_FAILED, False)
    assert "PoolChangeFailed" in record.message and "too little free capacity" in record.message
    assert len(arm.of("poolChange")) == 1 and arm.volumes[VOLUME] == "pool-std"


def test_slow_operation_hits_the_timeout_and_polling_stops(arm, settings, client_factory, metrics):
    arm.lro_outcome = "Never"
    client = client_factory(settings, arm.subscription)  # kept open: the poller must stop on its own
    mover = PoolMover(client, settings, metrics=metrics)
    ref = volume_ref(trident_pv(), settings)
    started = time.monotonic()

    record = mover.move(ref, "Premium", timeout_s=0.5)

    elapsed = time.monotonic() - started
    assert (record.result, record.reason, record.retryable) == (MoveResult.TIMED_OUT, Reason.TIMED_OUT, True)
    assert 0.5 <= elapsed < 3, elapsed
    assert "not finished within the move's budget of 0.5 s" in record.message and "InProgress" in record.message
    assert len(arm.of("poolChange")) == 1 and arm.volumes[VOLUME] == "pool-std"
    assert len(arm.of("operation")) >= 2
    # The poller's thread ends at its next poll instead of polling forever.
    deadline = time.monotonic() + 2
    while any(t.name.startswith("LROPoller") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.name.startswith("LROPoller") for t in threading.enumerate())
    polls = len(arm.of("operation"))
    time.sleep(0.1)
    assert len(arm.of("operation")) == polls
    assert mover.current_level(ref) == "Standard"
    client.close()
    assert StorageMove.model_validate(record.to_status()).result == "TimedOut"
    assert sample(metrics, "lanex_storage_pool_changes_total", result="TimedOut") == 1


def test_wrong_token_is_an_authentication_failure(arm, settings, tls):
    def factory(settings: TierSettings, subscription_id: str) -> NetAppManagementClient:
        return NetAppManagementClient(FakeCredential("expired"), subscription_id, base_url=settings.arm_endpoint,
                                      connection_verify=str(tls.ca_cert), retry_total=0)

    record = apply_tier(trident_pv(), "Premium", settings, factory)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.NO_CREDENTIALS, False)
    assert "401 AuthenticationFailed" in record.message and record.attempts == 1


def test_production_factory_authenticates_with_workload_identity(arm, emulator, tls, tmp_path, monkeypatch):
    """`DefaultAzureCredential` as deployed: the pod's federated token is exchanged at the token endpoint."""
    env = emulator.operator_env(tls, tmp_path / "azure-identity-token")
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = TierSettings.from_env(env)

    record = apply_tier(trident_pv(), "Premium", settings, default_client_factory)

    assert record.result is MoveResult.SUCCEEDED, record.message
    token_requests = arm.of("token")
    assert len(token_requests) == 1 and token_requests[0].path == f"/{arm.tenant_id}/oauth2/v2.0/token"
    form = token_requests[0].body
    assert form["client_assertion"] == [arm.federated_token] and form["client_id"] == [arm.client_id]
    assert form["scope"] == ["https://management.azure.com/.default"]
    assert {r.authorization for r in arm.requests if r.route != "token"} == {f"Bearer {arm.token}"}
    assert arm.volumes[VOLUME] == "pool-prem"


def test_production_factory_without_azure_credentials_fails_clearly(arm, settings, monkeypatch):
    for variable in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
                     "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)

    record = apply_tier(trident_pv(), "Premium", settings, default_client_factory)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.NO_CREDENTIALS, False)
    assert "no Azure credentials: DefaultAzureCredential failed to retrieve a token" in record.message
    assert "configure workload identity" in record.message and "\n" not in record.message
    assert arm.requests == []  # no token, no request


def test_annotated_volume_in_another_account_than_the_pools_is_refused(arm, settings, client_factory):
    elsewhere = ("/subscriptions/other-sub/resourceGroups/rg/providers/Microsoft.NetApp/netAppAccounts/other/"
                 f"capacityPools/p/volumes/{VOLUME}")

    record = apply_tier(trident_pv(), "Premium", settings, client_factory, pvc=pvc({VOLUME_ID_ANNOTATION: elsewhere}))

    assert (record.result, record.reason) == (MoveResult.FAILED, Reason.NOT_CONFIGURED)
    assert "is in account other-sub/rg/other but the configured pools are in" in record.message
    assert arm.requests == []


def test_unreachable_arm_is_retried_then_reported_as_retryable(arm, settings, client_factory):
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = TierSettings(**{**settings.__dict__, "arm_endpoint": f"https://127.0.0.1:{port}"})

    record = apply_tier(trident_pv(), "Premium", closed, client_factory)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.CONNECTION, True)
    assert record.attempts == 3 and "cannot reach Azure Resource Manager" in record.message


def test_volume_missing_from_every_pool_names_what_was_tried(arm, settings, client_factory):
    del arm.volumes[VOLUME]

    record = apply_tier(trident_pv(), "Premium", settings, client_factory)

    assert (record.result, record.reason) == (MoveResult.FAILED, Reason.NOT_FOUND)
    assert f"ANF volume {VOLUME}" in record.message and "pool-std, pool-prem, pool-ultra" in record.message
    assert f"PV {VOLUME} spec.csi.volumeAttributes.internalName" in record.message
    assert arm.of("poolChange") == []


def test_non_anf_volume_fails_without_calling_azure(arm, settings, client_factory, metrics):
    pv = {"metadata": {"name": "pv-local"}, "spec": {"hostPath": {"path": "/data"}}}

    record = apply_tier(pv, "Premium", settings, client_factory, metrics=metrics)

    assert (record.result, record.reason, record.retryable) == (MoveResult.FAILED, Reason.NOT_MAPPED, False)
    assert "PV pv-local has no spec.csi: not an ANF volume provisioned by Trident" in record.message
    assert arm.requests == []
    assert sample(metrics, "lanex_storage_pool_changes_total", result="Failed") == 1


def test_level_without_a_configured_pool_fails_naming_the_variable(arm, settings, client_factory):
    partial = TierSettings(**{**settings.__dict__, "pools": {"Standard": settings.pools["Standard"]}})

    record = apply_tier(trident_pv(), "Ultra", partial, client_factory)

    assert (record.result, record.reason) == (MoveResult.FAILED, Reason.NOT_CONFIGURED)
    assert "LANEX_ANF_POOL_ULTRA" in record.message and "storage.tierPools.Ultra" in record.message
    assert arm.requests == []


# --- mapping PV -> ANF volume (pure) ----------------------------------------------------------------


@pytest.fixture
def env_settings() -> TierSettings:
    return TierSettings.from_env({
        "LANEX_ANF_POOL_STANDARD": "/subscriptions/sub-1/resourceGroups/rg-anf/providers/Microsoft.NetApp/"
                                   "netAppAccounts/acct-1/capacityPools/std",
        "LANEX_ANF_POOL_PREMIUM": "/subscriptions/sub-1/resourceGroups/rg-anf/providers/Microsoft.NetApp/"
                                  "netAppAccounts/acct-1/capacityPools/prem"})


def test_trident_pv_maps_to_its_anf_volume_in_the_configured_account(env_settings):
    ref = volume_ref(trident_pv(internal_name="pvc-abc"), env_settings, pvc())

    assert (ref.scope.subscription_id, ref.scope.resource_group, ref.scope.account) == ("sub-1", "rg-anf", "acct-1")
    assert ref.volume == "pvc-abc" and ref.pool_hint is None
    assert volume_resource_id(ref, "std") == ("/subscriptions/sub-1/resourceGroups/rg-anf/providers/Microsoft.NetApp/"
                                              "netAppAccounts/acct-1/capacityPools/std/volumes/pvc-abc")
    assert bound_pv_name(pvc()) == VOLUME


def test_annotation_overrides_the_mapping_pvc_first(env_settings):
    account = "/subscriptions/{0}/resourceGroups/{1}/providers/Microsoft.NetApp/netAppAccounts/{2}"
    on_pv = account.format("s2", "r2", "a2") + "/capacityPools/p2/volumes/v2"
    on_pvc = account.format("s3", "r3", "a3") + "/capacityPools/p3/volumes/v3"

    from_pv = volume_ref(trident_pv(annotations={VOLUME_ID_ANNOTATION: on_pv}), env_settings)
    from_pvc = volume_ref(trident_pv(annotations={VOLUME_ID_ANNOTATION: on_pv}), env_settings,
                          pvc({VOLUME_ID_ANNOTATION: on_pvc}))

    assert (from_pv.scope.account, from_pv.pool_hint, from_pv.volume) == ("a2", "p2", "v2")
    assert (from_pvc.scope.account, from_pvc.pool_hint, from_pvc.volume) == ("a3", "p3", "v3")
    assert from_pvc.source == f"PVC ml/lane-exp-data annotation {VOLUME_ID_ANNOTATION}"


@pytest.mark.parametrize(("pv", "message"), [
    ({"metadata": {"name": "pv-nfs"}, "spec": {"nfs": {"server": "10.0.0.4", "path": "/x"}}},
     "PV pv-nfs has no spec.csi: not an ANF volume provisioned by Trident"),
    ({"metadata": {"name": "pv-disk"}, "spec": {"csi": {"driver": "disk.csi.azure.com", "volumeHandle": "d"}}},
     "PV pv-disk spec.csi.driver is 'disk.csi.azure.com', not csi.trident.netapp.io"),
    ({"metadata": {"name": "pv-old"}, "spec": {"csi": {"driver": "csi.trident.netapp.io", "volumeHandle": "x",
                                                       "volumeAttributes": {"name": "x"}}}},
     "PV pv-old has no spec.csi.volumeAttributes.internalName: not an ANF volume provisioned by Trident"),
])
def test_non_anf_pvs_are_rejected_naming_the_field(env_settings, pv, message):
    with pytest.raises(VolumeMappingError) as caught:
        volume_ref(pv, env_settings)
    assert message in str(caught.value) and VOLUME_ID_ANNOTATION in str(caught.value)


def test_malformed_annotation_and_unbound_claim_are_explained(env_settings):
    with pytest.raises(VolumeMappingError, match=r"PV .* annotation lanex.dev/anf-volume-id: 'pool-1/vol' is not an "
                                                 r"ANF volume resource ID"):
        volume_ref(trident_pv(annotations={VOLUME_ID_ANNOTATION: "pool-1/vol"}), env_settings)
    with pytest.raises(VolumeMappingError,
                       match=r"PVC ml/lane-exp-data has no spec.volumeName: the claim is not bound"):
        bound_pv_name(pvc(volume_name=None))


# --- settings from the environment ----------------------------------------------------------------


def test_settings_from_env_with_bare_pool_names_and_account():
    settings = TierSettings.from_env({
        "LANEX_ANF_SUBSCRIPTION_ID": "sub-9", "LANEX_ANF_RESOURCE_GROUP": "rg-9", "LANEX_ANF_ACCOUNT": "acct-9",
        "LANEX_ANF_POOL_STANDARD": "std", "LANEX_ANF_POOL_ULTRA": "fast", "LANEX_ANF_MOVE_TIMEOUT_SECONDS": "120",
        "LANEX_ANF_RETRY_ATTEMPTS": "5", "UNRELATED": "x"})

    assert settings.configured and settings.move_timeout_seconds == 120 and settings.retry_attempts == 5
    assert settings.pool_id("Ultra") == ("/subscriptions/sub-9/resourceGroups/rg-9/providers/Microsoft.NetApp/"
                                         "netAppAccounts/acct-9/capacityPools/fast")
    assert settings.level_of_pool("FAST") == "Ultra" and settings.level_of_pool("other") is None
    with pytest.raises(TierConfigError) as caught:
        settings.pool_name("Premium")
    assert str(caught.value) == ("no capacity pool configured for service level Premium: set LANEX_ANF_POOL_PREMIUM "
                                 "(Helm value storage.tierPools.Premium) to the pool's resource ID")
    assert not TierSettings.from_env({}).configured


@pytest.mark.parametrize(("environ", "message"), [
    ({"LANEX_ANF_POOL_PREMIUM": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/x"},
     "LANEX_ANF_POOL_PREMIUM="),
    ({"LANEX_ANF_POOL_STANDARD": "/subscriptions/s/resourceGroups/r/providers/Microsoft.NetApp/netAppAccounts/a/"
                                 "capacityPools/p",
      "LANEX_ANF_POOL_PREMIUM": "/subscriptions/s/resourceGroups/r/providers/Microsoft.NetApp/netAppAccounts/b/"
                                "capacityPools/q"},
     "capacity pools are in different NetApp accounts"),
    ({"LANEX_ANF_POOL_STANDARD": "/subscriptions/s/resourceGroups/r/providers/Microsoft.NetApp/netAppAccounts/a/"
                                 "capacityPools/p", "LANEX_ANF_ACCOUNT": "other"},
     "LANEX_ANF_POOL_STANDARD: the pool's account is 'a' but LANEX_ANF_ACCOUNT is 'other'"),
    ({"LANEX_ANF_MOVE_TIMEOUT_SECONDS": "soon"}, "LANEX_ANF_MOVE_TIMEOUT_SECONDS='soon': expected a float"),
    ({"LANEX_ANF_RETRY_ATTEMPTS": "0"}, "LANEX_ANF_RETRY_ATTEMPTS='0': must be > 0"),
    ({"LANEX_ANF_ARM_ENDPOINT": "http://127.0.0.1:8080"}, "LANEX_ANF_ARM_ENDPOINT='http://127.0.0.1:8080': must be "
                                                          "an https:// URL"),
    ({"LANEX_ANF_POOL_ULTRA": "a/b"}, "LANEX_ANF_POOL_ULTRA='a/b': expected a capacity pool resource ID"),
])
def test_bad_settings_name_the_variable(environ, message):
    with pytest.raises(TierConfigError) as caught:
        TierSettings.from_env(environ)
    assert message in str(caught.value)


def test_bare_pool_names_without_an_account_say_what_to_set():
    settings = TierSettings.from_env({"LANEX_ANF_POOL_PREMIUM": "prem"})
    expected = (r"cannot map PV .*: the NetApp account is not configured: set "
                r"LANEX_ANF_SUBSCRIPTION_ID, LANEX_ANF_RESOURCE_GROUP, LANEX_ANF_ACCOUNT, or give the pools as full "
                r"resource IDs \(Helm values storage.tierPools.<Level>\)")
    with pytest.raises(TierConfigError, match=expected):
        volume_ref(trident_pv(), settings)


def test_metrics_live_in_the_given_registry():
    shared = CollectorRegistry()
    StorageTierMetrics(shared)
    StorageTierMetrics(CollectorRegistry())  # another registry: no duplicate-registration error
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        StorageTierMetrics(shared)
