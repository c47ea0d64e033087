"""Which Azure NetApp Files volume backs an experiment's PVC, and which pool serves each level.

Why it exists: changing a dataset volume's service level is an Azure call on an ANF volume, but
the operator only sees Kubernetes objects. Trident's CSI PersistentVolume names the ANF volume
(`spec.csi.volumeAttributes.internalName` is the ANF volume name and creation token) but not its
account or capacity pool, and the pool changes with every move. So the account and the pools come
from the operator's configuration (Helm values -> `LANEX_ANF_*` environment variables), and the
pool the volume sits in right now is found by asking ARM (see `storage_tier.PoolMover.locate`).
Clusters where that mapping does not hold annotate the PV or PVC with the full ANF volume ID
(`lanex.dev/anf-volume-id`).

Everything here is pure: dictionaries in, typed values or a clear error out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Optional

from azure.mgmt.core.tools import parse_resource_id, resource_id

SERVICE_LEVELS = ("Standard", "Premium", "Ultra")
ENV_PREFIX = "LANEX_ANF_"
HELM_POOLS = "storage.tierPools"  # the chart's values: storage.tierPools.Standard / .Premium / .Ultra
VOLUME_ID_ANNOTATION = "lanex.dev/anf-volume-id"
TRIDENT_DRIVER = "csi.trident.netapp.io"
DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
NETAPP_NAMESPACE = "Microsoft.NetApp"


class TierConfigError(ValueError):
    """The operator's storage-tier configuration is missing or wrong (names the variable and value)."""


class VolumeMappingError(ValueError):
    """A PV/PVC cannot be mapped to an ANF volume (names the object and the field)."""


@dataclasses.dataclass(frozen=True)
class AccountScope:
    """The NetApp account that holds the volume and all its pools (a move never leaves it)."""

    subscription_id: str
    resource_group: str
    account: str

    def pool_id(self, pool: str) -> str:
        """ARM resource ID of a capacity pool of this account."""
        return resource_id(subscription=self.subscription_id, resource_group=self.resource_group,
                           namespace=NETAPP_NAMESPACE, type="netAppAccounts", name=self.account,
                           child_type_1="capacityPools", child_name_1=pool)

    def volume_id(self, pool: str, volume: str) -> str:
        """ARM resource ID of a volume in one of this account's pools."""
        return f"{self.pool_id(pool)}/volumes/{volume}"


@dataclasses.dataclass(frozen=True)
class VolumeRef:
    """An ANF volume by name; `pool` is only a hint (where it was last seen), since moves change it."""

    scope: AccountScope
    volume: str
    pool_hint: Optional[str] = None
    source: str = ""  # where the mapping came from, for messages ("PV pvc-1 internalName")


def _env_field(name: str) -> str:
    return ENV_PREFIX + name.upper()


@dataclasses.dataclass(frozen=True)
class TierSettings:
    """Storage-tier configuration of the operator, read once from `LANEX_ANF_*` at start-up.

    Each pool value is either a capacity pool's full ARM resource ID or a bare pool name (then the
    account is given by `subscription_id`, `resource_group` and `account`).
    """

    # Capacity pool per service level: LANEX_ANF_POOL_STANDARD / _PREMIUM / _ULTRA
    # (Helm values storage.tierPools.Standard / .Premium / .Ultra).
    pools: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Account of the pools, needed only when pools are bare names (and checked against full IDs):
    # LANEX_ANF_SUBSCRIPTION_ID, LANEX_ANF_RESOURCE_GROUP, LANEX_ANF_ACCOUNT.
    subscription_id: Optional[str] = None
    resource_group: Optional[str] = None
    account: Optional[str] = None
    # ARM endpoint (sovereign clouds; tests point it at a local emulator).
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    # Budget of one move, retries included, in seconds; after it training goes on at the old level.
    move_timeout_seconds: float = 900.0
    # Poll interval of the long-running pool change when ARM sends no Retry-After, in seconds.
    poll_interval_seconds: float = 10.0
    # Attempts for retryable errors (409 conflicting operation, 429, 5xx, connection errors).
    retry_attempts: int = 3
    # Exponential backoff between attempts: first delay and cap, in seconds.
    retry_delay_seconds: float = 5.0
    retry_max_delay_seconds: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TierSettings:
        """Read `LANEX_ANF_*`; malformed values raise `TierConfigError` naming the variable."""
        environ = os.environ if environ is None else environ
        pools = {level: environ[_env_field(f"pool_{level}")].strip() for level in SERVICE_LEVELS
                 if environ.get(_env_field(f"pool_{level}"), "").strip()}
        text: dict[str, Any] = {}
        for name in ("subscription_id", "resource_group", "account", "arm_endpoint"):
            value = environ.get(_env_field(name), "").strip()
            if value:
                text[name] = value
        numbers: dict[str, Any] = {}
        for name, kind in (("move_timeout_seconds", float), ("poll_interval_seconds", float),
                           ("retry_attempts", int), ("retry_delay_seconds", float),
                           ("retry_max_delay_seconds", float)):
            raw = environ.get(_env_field(name))
            if raw is None or not raw.strip():
                continue
            try:
                value = kind(raw)
            except ValueError as exc:
                raise TierConfigError(f"{_env_field(name)}={raw!r}: expected a {kind.__name__}") from exc
            if value <= 0:
                raise TierConfigError(f"{_env_field(name)}={raw!r}: must be > 0")
            numbers[name] = value
        settings = cls(pools=pools, **text, **numbers)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check pool values and that all pools live in one account; raises `TierConfigError`."""
        if not self.arm_endpoint.startswith("https://"):
            raise TierConfigError(f"{_env_field('arm_endpoint')}={self.arm_endpoint!r}: must be an https:// URL "
                                  "(bearer tokens are only sent over TLS)")
        scopes: dict[str, AccountScope] = {}
        for level, value in self.pools.items():
            if level not in SERVICE_LEVELS:
                raise TierConfigError(f"unknown service level {level!r}: expected one of {', '.join(SERVICE_LEVELS)}")
            if value.startswith("/"):
                scopes[level] = _pool_scope(value, _env_field(f"pool_{level}"))
            elif "/" in value:
                raise TierConfigError(f"{_env_field(f'pool_{level}')}={value!r}: expected a capacity pool resource ID "
                                      "(/subscriptions/.../capacityPools/NAME) or a bare pool name")
        explicit = (self.subscription_id, self.resource_group, self.account)
        for level, scope in scopes.items():
            for got, want, name in zip(dataclasses.astuple(scope), explicit,
                                       ("subscription_id", "resource_group", "account")):
                if want is not None and got.lower() != want.lower():
                    raise TierConfigError(
                        f"{_env_field(f'pool_{level}')}: the pool's {name} is {got!r} but {_env_field(name)} is "
                        f"{want!r}: a volume can only move between pools of one NetApp account")
        distinct = {tuple(part.lower() for part in dataclasses.astuple(s)) for s in scopes.values()}
        if len(distinct) > 1:
            listed = ", ".join(f"{_env_field(f'pool_{level}')} in {s.subscription_id}/{s.resource_group}/{s.account}"
                               for level, s in scopes.items())
            raise TierConfigError(f"capacity pools are in different NetApp accounts ({listed}): "
                                  "a volume can only move between pools of one account")

    @property
    def configured(self) -> bool:
        """Whether any pool is configured (an operator without pools cannot change tiers)."""
        return bool(self.pools)

    def scope(self) -> AccountScope:
        """The NetApp account of the pools; raises `TierConfigError` naming what to set."""
        for value in self.pools.values():
            if value.startswith("/"):
                return _pool_scope(value, "")
        missing = [_env_field(name) for name, value in (("subscription_id", self.subscription_id),
                                                         ("resource_group", self.resource_group),
                                                         ("account", self.account)) if not value]
        if missing:
            raise TierConfigError(f"the NetApp account is not configured: set {', '.join(missing)}, or give the "
                                  f"pools as full resource IDs (Helm values {HELM_POOLS}.<Level>)")
        return AccountScope(str(self.subscription_id), str(self.resource_group), str(self.account))

    def pool_name(self, level: str) -> str:
        """Name of the capacity pool configured for `level`; raises `TierConfigError` if there is none."""
        if level not in SERVICE_LEVELS:
            raise TierConfigError(f"unknown service level {level!r}: expected one of {', '.join(SERVICE_LEVELS)}")
        value = self.pools.get(level)
        if not value:
            raise TierConfigError(
                f"no capacity pool configured for service level {level}: set {_env_field(f'pool_{level}')} "
                f"(Helm value {HELM_POOLS}.{level}) to the pool's resource ID")
        return parse_resource_id(value)["child_name_1"] if value.startswith("/") else value

    def pool_id(self, level: str) -> str:
        """Full ARM resource ID of the capacity pool configured for `level`."""
        return self.scope().pool_id(self.pool_name(level))

    def level_of_pool(self, pool: str) -> Optional[str]:
        """The service level whose configured pool is `pool` (names compare case-insensitively)."""
        for level in self.pools:
            if self.pool_name(level).lower() == pool.lower():
                return level
        return None


def _pool_scope(value: str, variable: str) -> AccountScope:
    parts = parse_resource_id(value)
    shape_ok = (parts.get("namespace", "").lower() == NETAPP_NAMESPACE.lower()
                and parts.get("type", "").lower() == "netappaccounts"
                and parts.get("child_type_1", "").lower() == "capacitypools"
                and parts.get("last_child_num") == 1 and parts.get("subscription") and parts.get("resource_group"))
    if not shape_ok:
        raise TierConfigError(f"{variable}={value!r}: not a capacity pool resource ID (expected /subscriptions/SUB/"
                              "resourceGroups/RG/providers/Microsoft.NetApp/netAppAccounts/ACCOUNT/capacityPools/POOL)")
    return AccountScope(parts["subscription"], parts["resource_group"], parts["name"])


def parse_volume_id(value: str, where: str) -> tuple[AccountScope, str, str]:
    """Split an ANF volume resource ID into (account scope, pool, volume); errors name `where`."""
    parts = parse_resource_id(value.strip())
    shape_ok = (value.strip().startswith("/")
                and parts.get("namespace", "").lower() == NETAPP_NAMESPACE.lower()
                and parts.get("type", "").lower() == "netappaccounts"
                and parts.get("child_type_1", "").lower() == "capacitypools"
                and parts.get("child_type_2", "").lower() == "volumes"
                and parts.get("last_child_num") == 2 and parts.get("subscription") and parts.get("resource_group"))
    if not shape_ok:
        raise VolumeMappingError(f"{where}: {value!r} is not an ANF volume resource ID (expected /subscriptions/SUB/"
                                 "resourceGroups/RG/providers/Microsoft.NetApp/netAppAccounts/ACCOUNT/capacityPools/"
                                 "POOL/volumes/VOLUME)")
    scope = AccountScope(parts["subscription"], parts["resource_group"], parts["name"])
    return scope, parts["child_name_1"], parts["child_name_2"]


def _annotation(obj: Mapping[str, Any] | None) -> Optional[str]:
    if not obj:
        return None
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(VOLUME_ID_ANNOTATION)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _describe(obj: Mapping[str, Any], kind: str) -> str:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "?")
    return f"{kind} {meta['namespace']}/{name}" if meta.get("namespace") else f"{kind} {name}"


def bound_pv_name(pvc: Mapping[str, Any]) -> str:
    """Name of the PV a PVC is bound to (`spec.volumeName`); raises if the claim is not bound yet."""
    name = (pvc.get("spec") or {}).get("volumeName")
    if not name:
        raise VolumeMappingError(f"{_describe(pvc, 'PVC')} has no spec.volumeName: the claim is not bound to a PV yet")
    return str(name)


def volume_ref(pv: Mapping[str, Any], settings: TierSettings, pvc: Mapping[str, Any] | None = None) -> VolumeRef:
    """Map a PV (and optionally its PVC) to the ANF volume behind it.

    Order: the `lanex.dev/anf-volume-id` annotation on the PVC, then on the PV (a full volume ID;
    its pool is kept as a hint); otherwise a Trident CSI PV's `spec.csi.volumeAttributes.internalName`
    in the account configured by `settings`.
    """
    for obj, kind in ((pvc, "PVC"), (pv, "PV")):
        override = _annotation(obj)
        if override and obj is not None:
            where = f"{_describe(obj, kind)} annotation {VOLUME_ID_ANNOTATION}"
            scope, pool, volume = parse_volume_id(override, where)
            return VolumeRef(scope=scope, volume=volume, pool_hint=pool, source=where)
    csi = (pv.get("spec") or {}).get("csi") or {}
    name = _describe(pv, "PV")
    if not csi:
        raise VolumeMappingError(f"{name} has no spec.csi: not an ANF volume provisioned by Trident "
                                 f"(annotate the PV or PVC with {VOLUME_ID_ANNOTATION} to map it explicitly)")
    if csi.get("driver") != TRIDENT_DRIVER:
        raise VolumeMappingError(f"{name} spec.csi.driver is {csi.get('driver')!r}, not {TRIDENT_DRIVER}: not an ANF "
                                 f"volume provisioned by Trident (annotate it with {VOLUME_ID_ANNOTATION})")
    internal = (csi.get("volumeAttributes") or {}).get("internalName")
    if not internal:
        raise VolumeMappingError(f"{name} has no spec.csi.volumeAttributes.internalName: not an ANF volume "
                                 f"provisioned by Trident (annotate it with {VOLUME_ID_ANNOTATION})")
    try:
        scope = settings.scope()
    except TierConfigError as exc:
        raise TierConfigError(f"cannot map {name} to its ANF volume: {exc}") from exc
    return VolumeRef(scope=scope, volume=str(internal), source=f"{name} spec.csi.volumeAttributes.internalName")


def volume_resource_id(ref: VolumeRef, pool: str) -> str:
    """ARM resource ID of the referenced volume when it sits in `pool`."""
    return ref.scope.volume_id(pool, ref.volume)
