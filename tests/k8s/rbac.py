"""The RBAC rules the operator actually uses, derived from the emulator's request log.

Why it exists: the Helm chart's ClusterRole must grant exactly what the operator does, no more.
`used_rules` turns recorded requests into (apiGroup, resource, verb) triples. `ALWAYS_USED` is what
a full lifecycle plus deletion uses, `CONDITIONAL_RULES` what only some paths use (RUN:ai, existing
claims, restores, failures, retention Delete); `OPERATOR_RULES`, their union, is what the chart's
ClusterRole must grant, exactly (tests/test_operator_emulator.py checks the operator against it).
"""

from __future__ import annotations

from collections.abc import Iterable

from k8s.emulator import ApiCall

OPERATOR_USER_AGENTS = ("kopf/", "lanex-operator/")

Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

ALWAYS_USED: frozenset[Rule] = frozenset({
    # kopf: discovery of CRDs, the experiments (watch, finalizer and progress patches, status), Events
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("lanex.dev", "laneexperiments", "list"),
    ("lanex.dev", "laneexperiments", "watch"),
    ("lanex.dev", "laneexperiments", "patch"),
    ("lanex.dev", "laneexperiments/status", "patch"),
    ("", "events", "create"),
    # children: watched (kopf), created and read (reconciler), snapshots deleted by retention
    ("", "persistentvolumeclaims", "list"),
    ("", "persistentvolumeclaims", "watch"),
    ("", "persistentvolumeclaims", "create"),
    ("", "persistentvolumeclaims", "patch"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "create"),
    ("kubeflow.org", "mpijobs", "list"),
    ("kubeflow.org", "mpijobs", "watch"),
    ("kubeflow.org", "mpijobs", "create"),
    ("kubeflow.org", "mpijobs", "get"),
    ("snapshot.storage.k8s.io", "volumesnapshots", "list"),
    ("snapshot.storage.k8s.io", "volumesnapshots", "watch"),
    ("snapshot.storage.k8s.io", "volumesnapshots", "create"),
    ("snapshot.storage.k8s.io", "volumesnapshots", "delete"),
    # the share step (TR-4896 patches the PV), termination messages, preflight lookups
    ("", "persistentvolumes", "get"),
    ("", "persistentvolumes", "patch"),
    ("", "pods", "list"),
    ("storage.k8s.io", "storageclasses", "get"),
    ("snapshot.storage.k8s.io", "volumesnapshotclasses", "get"),
})

# Used only on some paths (RUN:ai, existing claims, restores, failures, retention Delete of the dataset).
CONDITIONAL_RULES: frozenset[Rule] = frozenset({
    ("", "namespaces", "get"),
    ("", "persistentvolumeclaims", "get"),
    ("", "persistentvolumeclaims", "delete"),
    ("batch", "jobs", "get"),
    ("snapshot.storage.k8s.io", "volumesnapshots", "get"),
    ("", "events", "list"),
})

OPERATOR_RULES: frozenset[Rule] = ALWAYS_USED | CONDITIONAL_RULES


def used_rules(calls: Iterable[ApiCall], user_agents: tuple[str, ...] = OPERATOR_USER_AGENTS) -> set[Rule]:
    return {(call.group, call.resource, call.verb) for call in calls if call.user_agent.startswith(user_agents)}
