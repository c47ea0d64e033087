"""Checks that what an experiment needs exists in the cluster before anything is created.

Why it exists: a missing VolumeSnapshot or MPIJob API, storage class, snapshot class or RUN:ai
project namespace would otherwise surface as a crash loop or a child stuck forever. The operator
checks at start-up (logged) and for each experiment (reported as the `Preflight` condition and a
Warning Event, retried until it passes). Lookups are cached for a few seconds so that many
experiments arriving together cost one request per distinct object.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from lanex_operator.api.models import LaneExperimentSpec
from lanex_operator.kube import Kube, object_path

MPIJOB_API = ("kubeflow.org/v2beta1", "mpijobs")
SNAPSHOT_API = ("snapshot.storage.k8s.io/v1", "volumesnapshots")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something missing, with the reason used in the condition and what to do about it."""

    reason: str
    message: str


class Preflight:
    """Existence checks with a short-lived cache shared by all experiments."""

    def __init__(self, kube: Kube, ttl_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.ttl = ttl_seconds
        self.clock = clock
        self._cache: dict[str, tuple[float, bool]] = {}

    async def _exists(self, key: str, probe: Callable[[], object]) -> bool:
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = bool(await probe())  # type: ignore[misc]
        self._cache[key] = (now + (self.ttl if found else min(self.ttl, 2.0)), found)
        return found

    async def _object(self, path: str) -> bool:
        return await self._exists(path, lambda: self.kube.get_or_none(path))

    async def _api(self, api_version: str, plural: str) -> bool:
        return await self._exists(f"api:{api_version}/{plural}", lambda: self.kube.api_served(api_version, plural))

    async def cluster(self) -> list[Problem]:
        """The APIs every experiment needs (checked at operator start-up)."""
        problems = []
        if not await self._api(*MPIJOB_API):
            problems.append(Problem("MissingMPIJobAPI", "the kubeflow.org/v2beta1 MPIJob API is not served: "
                                                        "install the Kubeflow MPI operator (v0.4 or later)"))
        if not await self._api(*SNAPSHOT_API):
            problems.append(Problem("MissingVolumeSnapshotAPI", "the snapshot.storage.k8s.io/v1 VolumeSnapshot API "
                                                                "is not served: install the external-snapshotter "
                                                                "CRDs and snapshot controller"))
        return problems

    async def experiment(self, namespace: str, spec: LaneExperimentSpec) -> list[Problem]:
        """Everything this experiment's spec refers to."""
        problems: list[Problem] = []
        needs_snapshots = spec.snapshot.enabled or spec.dataset.from_snapshot is not None
        for problem in await self.cluster():
            if problem.reason != "MissingVolumeSnapshotAPI" or needs_snapshots:
                problems.append(problem)
        dataset = spec.dataset
        if dataset.existing_claim is None:
            name = dataset.storage_class_name
            if not await self._object(object_path("storage.k8s.io/v1", "storageclasses", name=name)):
                problems.append(Problem("MissingStorageClass", f'storage class "{name}" '
                                                               f"(spec.dataset.storageClassName) not found"))
        else:
            claim = dataset.existing_claim.claim_name
            if not await self._object(object_path("v1", "persistentvolumeclaims", namespace, claim)):
                problems.append(Problem("MissingClaim", f'PersistentVolumeClaim "{claim}" '
                                                        f"(spec.dataset.existingClaim.claimName) not found in "
                                                        f'namespace "{namespace}"'))
        snapshot_api = not any(p.reason == "MissingVolumeSnapshotAPI" for p in problems)
        if dataset.from_snapshot is not None and snapshot_api:
            source = dataset.from_snapshot.snapshot_name
            path = object_path(SNAPSHOT_API[0], "volumesnapshots", namespace, source)
            if not await self._object(path):
                problems.append(Problem("MissingSnapshot", f'VolumeSnapshot "{source}" '
                                                           f"(spec.dataset.fromSnapshot.snapshotName) not found in "
                                                           f'namespace "{namespace}"'))
        if spec.snapshot.enabled and snapshot_api:
            klass = spec.snapshot.volume_snapshot_class_name
            if not await self._object(object_path(SNAPSHOT_API[0], "volumesnapshotclasses", name=klass)):
                problems.append(Problem("MissingVolumeSnapshotClass", f'VolumeSnapshotClass "{klass}" '
                                                                      f"(spec.snapshot.volumeSnapshotClassName) "
                                                                      f"not found"))
        if spec.scheduler.type == "runai":
            project_ns = f"runai-{spec.scheduler.project}"
            if not await self._object(object_path("v1", "namespaces", name=project_ns)):
                problems.append(Problem("MissingRunaiProject", f'namespace "{project_ns}" of RUN:ai project '
                                                               f'"{spec.scheduler.project}" (spec.scheduler.project) '
                                                               f"not found: create the project in RUN:ai"))
        return problems
