"""Reference page of the Helm chart's values, from `values.schema.json` and the defaults in `values.yaml`.

The schema is what `helm install` checks every value against, so its descriptions and constraints
are the values' documentation; the defaults are read from the chart's own values file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

import cells

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"


def _constraints(node: dict[str, Any]) -> list[str]:
    notes = []
    if "enum" in node:
        notes.append("one of " + ", ".join(f"`{json.dumps(value)}`" for value in node["enum"]))
    for key, word in (("minimum", ">="), ("maximum", "<="), ("exclusiveMinimum", ">"), ("exclusiveMaximum", "<")):
        if key in node and not isinstance(node[key], bool):
            notes.append(f"{word} {node[key]}")
    if "pattern" in node:
        notes.append(f"pattern `{node['pattern']}`")
    return notes


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array" and isinstance(node.get("items"), dict) and "type" in node["items"]:
        kind = f"list of {_type(node['items'])}"
    return str(kind)


def values(schema: dict[str, Any], defaults: Any, path: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, description) of every value the schema declares, depth first."""
    for name, node in schema.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        default = defaults.get(name) if isinstance(defaults, dict) else None
        children = node.get("properties")
        description = node.get("description", "")
        notes = _constraints(node)
        if notes:
            description += (" " if description else "") + "(" + "; ".join(notes) + ")"
        shown = "" if children or default is None else f"`{json.dumps(default)}`"
        if description or not children:
            yield key, _type(node), shown, description
        if children:
            yield from values(node, default, key)


def page() -> str:
    lines = ["# Helm values", "",
             cells.generated_note("each chart's `values.schema.json` and `values.yaml`"),
             "Every value is checked by the schema, so a typo or a wrong value fails `helm install` (and "
             "`helm template`, `helm lint`) with the key and the reason. Installing: "
             "[Install](../operations/install.md).", ""]
    for chart in sorted(CHARTS.iterdir()):
        schema_file = chart / "values.schema.json"
        if not schema_file.is_file():
            continue
        schema = json.loads(schema_file.read_text())
        defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
        rows = [(f"`{key}`", kind, default.replace("|", "\\|"), cells.text(description))
                for key, kind, default, description in values(schema, defaults)]
        lines += [f"## {chart.name}", "", cells.table(("Value", "Type", "Default", "Description"), rows)]
    return "\n".join(lines)
