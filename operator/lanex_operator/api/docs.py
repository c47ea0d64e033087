"""The LaneExperiment field reference as a Markdown table, generated from the CRD schema.

`python -m lanex_operator.api.docs` prints it (the docs site's API reference is built from `field_rows`), so the docs show
the same names, defaults and constraints that the API server and `parse_spec` enforce.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterator, Optional


def _type_name(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity"
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type_name(node.get('items', {}))}"
    if kind == "object" and "properties" not in node and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type_name(node['additionalProperties'])}"
    return str(kind)


def _constraints(node: dict[str, Any]) -> list[str]:
    notes = []
    if "enum" in node:
        notes.append("one of " + ", ".join(f"`{value}`" for value in node["enum"]))
    if "minimum" in node:
        notes.append(("> " if node.get("exclusiveMinimum") else ">= ") + str(node["minimum"]))
    if "maximum" in node:
        notes.append(("< " if node.get("exclusiveMaximum") else "<= ") + str(node["maximum"]))
    if "multipleOf" in node:
        notes.append(f"multiple of {node['multipleOf']}")
    if "minItems" in node:
        notes.append(f"at least {node['minItems']} item(s)")
    if "maxLength" in node:
        notes.append(f"at most {node['maxLength']} characters")
    return notes


def _rows(node: dict[str, Any], path: str, required: bool) -> Iterator[tuple[str, str, str, str, str]]:
    if path:
        default = node.get("default")
        shown_default = "" if default is None or default == {} else f"`{json.dumps(default)}`"
        notes = _constraints(node)
        description = node.get("description", "")
        if notes:
            description += " (" + "; ".join(notes) + ")"
        yield (f"`{path}`", _type_name(node), "yes" if required else "", shown_default, description)
    needed = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        yield from _rows(child, f"{path}.{name}" if path else name, name in needed)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        for name, child in items["properties"].items():
            yield from _rows(child, f"{path}[].{name}", name in set(items.get("required", [])))


def field_rows(schema: Optional[dict[str, Any]] = None, root: str = "spec") -> list[tuple[str, str, str, str, str]]:
    """(path, type, required, default, description) of every field under `root` (default: the
    LaneExperiment spec), in schema order; path and default are Markdown code, the rest plain text."""
    if schema is None:
        from lanex_operator.api.crd import spec_schema

        schema = spec_schema()
    return [(path.replace("`", "`" + root + ".", 1), kind, required, default, description)
            for path, kind, required, default, description in _rows(schema, "", False)]


def fields_table(schema: Optional[dict[str, Any]] = None, root: str = "spec") -> str:
    """A Markdown table of every field under `root` (default: the LaneExperiment spec)."""
    lines = ["| Field | Type | Required | Default | Description |", "|---|---|---|---|---|"]
    for path, kind, required, default, description in field_rows(schema, root):
        cell = description.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {path} | {kind} | {required} | {default} | {cell} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Print the spec's field table."""
    sys.stdout.write(fields_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
