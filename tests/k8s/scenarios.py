"""Building LaneExperiments and reading their outcome in the emulated cluster, for the operator tests.

Why it exists: every operator test creates experiments, waits for a phase and inspects children;
doing it one way keeps the tests about their scenario.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from k8s.harness import EmulatedCluster

EXPERIMENT_LABEL = "lanex.dev/experiment"
CHILD_PLURALS = ("persistentvolumeclaims", "jobs", "mpijobs", "volumesnapshots")


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def experiment(name: str, namespace: str = "default", spec: Mapping[str, Any] | None = None,
               labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A small synthetic-data LaneExperiment; `spec` is merged over the default."""
    base = {"dataset": {"synthetic": {"clips": 4, "seed": 7}},
            "training": {"workers": 2, "epochs": 1, "backbone": "small"}}
    body: dict[str, Any] = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
                            "metadata": {"name": name, "namespace": namespace},
                            "spec": deep_merge(base, spec or {})}
    if labels:
        body["metadata"]["labels"] = dict(labels)
    return body


def get_experiment(cluster: EmulatedCluster, name: str, namespace: str = "default") -> dict[str, Any]:
    found = cluster.get("laneexperiments", name, namespace)
    assert found is not None, f"LaneExperiment {namespace}/{name} does not exist"
    return found


def phase_of(cluster: EmulatedCluster, name: str, namespace: str = "default") -> str | None:
    found = cluster.get("laneexperiments", name, namespace)
    return None if found is None else (found.get("status") or {}).get("phase")


def wait_phase(cluster: EmulatedCluster, name: str, phases: Iterable[str], namespace: str = "default",
               timeout: float = 20.0) -> dict[str, Any]:
    wanted = set(phases)
    cluster.wait_for(lambda: phase_of(cluster, name, namespace) in wanted, timeout=timeout,
                     message=f"{namespace}/{name} to reach {sorted(wanted)} "
                             f"(status: {(cluster.get('laneexperiments', name, namespace) or {}).get('status')})")
    return get_experiment(cluster, name, namespace)


def children(cluster: EmulatedCluster, name: str, namespace: str = "default") -> dict[str, list[dict[str, Any]]]:
    """Every child labelled with the experiment, by plural."""
    return {plural: cluster.list(plural, namespace, label_selector=f"{EXPERIMENT_LABEL}={name}")
            for plural in CHILD_PLURALS}


def child_counts(cluster: EmulatedCluster, name: str, namespace: str = "default") -> dict[str, int]:
    return {plural: len(items) for plural, items in children(cluster, name, namespace).items()}


def condition(exp: Mapping[str, Any], type_: str) -> dict[str, Any]:
    for item in (exp.get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            return item
    raise AssertionError(f"no condition {type_} in {[(c['type'], c['status']) for c in (exp.get('status') or {}).get('conditions') or []]}")


def experiment_events(cluster: EmulatedCluster, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    events = [e for e in cluster.list("events", namespace, api_version="v1")
              if (e.get("involvedObject") or {}).get("kind") == "LaneExperiment"
              and (e.get("involvedObject") or {}).get("name") == name]
    return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))
