"""The kinds of children an experiment has, and the operator's in-memory view of them.

Why it exists: kopf already watches the children (to wake the experiment when one changes), so the
latest body of each child is known without asking the API server again. `ChildCache` keeps it,
fed by those watch events and by the operator's own create/get responses, always keeping the newer
resourceVersion so that a slow response never overwrites a newer event. It holds only objects that
carry the experiment label: those are the ones the watch keeps up to date. An unlabelled object under
a child's name (made by someone else, or an existing claim) is returned but not kept, so it is read
afresh every time instead of going stale. `Wakers` lets a child's
event wake the daemon of its experiment at once instead of at the next resync.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from lanex_operator.controller.kube import Kube, KubeError, object_path

EXPERIMENT_LABEL = "lanex.dev/experiment"
SWEEP_LABEL = "lanex.dev/sweep"  # a LaneSweep's dataset children: watched (and so cached) the same way


@dataclasses.dataclass(frozen=True)
class ChildKind:
    api_version: str
    plural: str
    kind: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


PVC = ChildKind("v1", "persistentvolumeclaims", "PersistentVolumeClaim")
JOB = ChildKind("batch/v1", "jobs", "Job")
MPIJOB = ChildKind("kubeflow.org/v2beta1", "mpijobs", "MPIJob")
SNAPSHOT = ChildKind("snapshot.storage.k8s.io/v1", "volumesnapshots", "VolumeSnapshot")
POD = ChildKind("v1", "pods", "Pod")  # not a child: named only to read the prepare pod's Events
WATCHED_KINDS = (PVC, JOB, MPIJOB, SNAPSHOT)

Key = tuple[str, str, str]  # (kind, namespace, name)


def _version(obj: Mapping[str, Any]) -> int:
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else -1


class ChildCache:
    """Latest known body of each child, by (kind, namespace, name)."""

    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any]] = {}
        self._gone: dict[Key, int] = {}  # resourceVersion of deletions, so late responses do not resurrect

    def get(self, kind: ChildKind, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get((kind.kind, namespace, name))

    def put(self, kind: ChildKind, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if EXPERIMENT_LABEL not in labels and SWEEP_LABEL not in labels:
            return dict(obj)  # no watch event will ever refresh it
        key = (kind.kind, meta.get("namespace") or "", meta.get("name") or "")
        current = self._objects.get(key)
        version = _version(obj)
        if current is not None and _version(current) > version >= 0:
            return current
        if self._gone.get(key, -1) > version >= 0:
            return dict(obj)
        self._objects[key] = dict(obj)
        self._gone.pop(key, None)
        return self._objects[key]

    def forget(self, kind: ChildKind, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (kind.kind, meta.get("namespace") or "", meta.get("name") or "")
        self._objects.pop(key, None)
        self._gone[key] = _version(obj)

    def __len__(self) -> int:
        return len(self._objects)


class Wakers:
    """One asyncio.Event per experiment (namespace, name), set when something about it changed."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._generations: dict[tuple[str, str], int] = {}

    def event(self, namespace: str, name: str) -> asyncio.Event:
        return self._events.setdefault((namespace, name), asyncio.Event())

    def poke(self, namespace: str, name: str) -> None:
        event = self._events.get((namespace, name))
        if event is not None:
            event.set()

    def poke_if_changed(self, namespace: str, name: str, generation: int) -> None:
        """Poke when the experiment's generation differs from the last one seen (a spec change)."""
        if self._generations.get((namespace, name)) != generation:
            self._generations[(namespace, name)] = generation
            self.poke(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        self._events.pop((namespace, name), None)
        self._generations.pop((namespace, name), None)

    async def wait(self, namespace: str, name: str, timeout: float) -> bool:
        """Wait until poked or `timeout` passes; True when poked."""
        event = self.event(namespace, name)
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            event.clear()


async def read_child(kube: Kube, cache: ChildCache, kind: ChildKind, namespace: str, name: str,
                     fresh: bool = False) -> dict[str, Any] | None:
    """A child from the watch-fed cache, else (or when `fresh`) from the API server, then cached if labelled."""
    cached = None if fresh else cache.get(kind, namespace, name)
    if cached is not None:
        return cached
    found = await kube.get_or_none(object_path(kind.api_version, kind.plural, namespace, name))
    return None if found is None else cache.put(kind, found)


async def create_child(kube: Kube, cache: ChildCache, kind: ChildKind, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create a child; one that already exists (a restart between create and its watch event) is read instead."""
    meta = manifest["metadata"]
    try:
        created = await kube.create(object_path(kind.api_version, kind.plural, meta["namespace"]), manifest)
    except KubeError as exc:
        if not exc.already_exists:
            raise
        created = await kube.get(object_path(kind.api_version, kind.plural, meta["namespace"], meta["name"]))
    return cache.put(kind, created)

