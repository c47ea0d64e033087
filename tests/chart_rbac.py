"""The Helm chart rendered offline, and the permissions its Roles and ClusterRoles grant.

Why it exists: the chart's RBAC rules are written once (`templates/_rbac.tpl`). The chart tests
check them against the list of what the operator needs, and the operator tests compare them with
the API calls the real operator makes; both read the rules back from the rendered chart through
this module, so neither keeps a second copy.

    from chart_rbac import granted_permissions
    assert ("batch", "jobs", "create") in granted_permissions()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "charts" / "lanex-operator"
RELEASE = "lanex"
RELEASE_NAMESPACE = "lanex-system"
RBAC_KINDS = ("Role", "ClusterRole")

Permission = tuple[str, str, str]  # (apiGroup, resource, verb); core group is ""


def render_chart(values: Mapping[str, Any] | None = None, *, release: str = RELEASE,
                 namespace: str = RELEASE_NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would print them (no cluster involved)."""
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(dict(values) if values is not None else None, name=release, namespace=namespace)


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendering (NOTES.txt and empty documents left out)."""
    objects = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(rendered[path]):
            if document:
                objects.append(document)
    return objects


def rules_of(role: Mapping[str, Any]) -> list[Permission]:
    """Every (apiGroup, resource, verb) one Role or ClusterRole grants."""
    return [
        (group, resource, verb)
        for rule in role.get("rules") or []
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    ]


def chart_rbac_rules(rendered: Mapping[str, str] | Iterable[Mapping[str, Any]]) -> list[Permission]:
    """The permissions granted by all Roles and ClusterRoles of a rendering (`render_chart`'s result,
    or its parsed objects), sorted, without repeats."""
    objects = manifests(rendered) if isinstance(rendered, Mapping) else rendered
    granted = {permission for obj in objects if obj.get("kind") in RBAC_KINDS for permission in rules_of(obj)}
    return sorted(granted)


def grants_by_scope(values: Mapping[str, Any] | None = None) -> dict[str | None, set[Permission]]:
    """Permissions per scope: a namespace (from a Role) or None (cluster-wide, from a ClusterRole)."""
    scopes: dict[str | None, set[Permission]] = {}
    for obj in manifests(render_chart(values)):
        if obj.get("kind") in RBAC_KINDS:
            scope = obj["metadata"].get("namespace") if obj["kind"] == "Role" else None
            scopes.setdefault(scope, set()).update(rules_of(obj))
    return scopes


def granted_permissions(values: dict | None = None) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) the chart grants the operator with these values (default: the chart's)."""
    return set(chart_rbac_rules(manifests(render_chart(values))))
