"""Pydantic JSON Schema -> Kubernetes structural openAPIV3Schema, and back to JSON Schema for tests.

A CRD schema must be *structural*: no `$ref`, every node typed, no `title`, no
`additionalProperties: false` next to `properties` (the API server prunes or, with strict field
validation, rejects unknown fields instead), nullability as `nullable`, OpenAPI 3.0's boolean
`exclusiveMinimum`, and logical junctors (`oneOf`, `not`) holding value checks only.
pydantic emits JSON Schema 2020-12, so this module translates one into the other.

`to_json_schema` goes the other way so that a CRD schema can be checked with `jsonschema`
exactly as the API server would apply it (minus CEL rules), including strict field validation.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

_NULL = {"type": "null"}
_DROP = {"title", "discriminator", "$defs"}
_JUNCTORS = ("oneOf", "anyOf", "allOf")
# Inside a junctor only value validations may appear; these belong to the structural part.
_NOT_IN_JUNCTORS = {"type", "description", "default", "nullable", "additionalProperties", "title"}


def structural_schema(model: type[BaseModel], *, nullable_optionals: bool) -> dict[str, Any]:
    """The structural openAPIV3Schema of a pydantic model (camelCase field names).

    Optional fields (`X | None`) become `nullable: true` when `nullable_optionals`, else they
    are simply not required (a null is then pruned by the API server, like an absent field).
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _ordered(_convert(raw, definitions, nullable_optionals))


# Generated YAML reads like a hand-written CRD: what a node is first, its children last.
_KEY_ORDER = ("type", "description", "default", "nullable", "enum", "format", "pattern")
_KEY_LAST = ("required", "oneOf", "anyOf", "not", "x-kubernetes-validations", "properties", "additionalProperties", "items")


def _ordered(node: Any) -> Any:
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    first = [key for key in _KEY_ORDER if key in node]
    last = [key for key in _KEY_LAST if key in node]
    middle = sorted(key for key in node if key not in first and key not in last)
    ordered = {}
    for key in first + middle + last:
        value = node[key]
        if key == "properties":  # field names keep the models' declaration order
            ordered[key] = {name: _ordered(sub) for name, sub in value.items()}
        elif key in ("default", "enum"):
            ordered[key] = value
        else:
            ordered[key] = _ordered(value)
    return ordered


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    # `{"$ref": X, "description": ...}` -> X's schema with the field's own keys winning.
    while "$ref" in node or ("allOf" in node and len(node["allOf"]) == 1 and "$ref" in node["allOf"][0]):
        if "$ref" in node:
            reference, siblings = node["$ref"], {k: v for k, v in node.items() if k != "$ref"}
        else:
            reference, siblings = node["allOf"][0]["$ref"], {k: v for k, v in node.items() if k != "allOf"}
        target = definitions[reference.rsplit("/", 1)[-1]]
        node = {**copy.deepcopy(target), **siblings}
    return node


def _convert(node: dict[str, Any], definitions: dict[str, Any], nullable: bool) -> dict[str, Any]:
    node = _resolve(node, definitions)
    if "anyOf" in node and _NULL in node["anyOf"]:
        return _convert_optional(node, definitions, nullable)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {name: _convert(sub, definitions, nullable) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, definitions, nullable)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = _convert(value, definitions, nullable)
        elif key in _JUNCTORS:
            out[key] = [_junctor_branch(branch, definitions, nullable) for branch in value]
        elif key == "not":
            out["not"] = _junctor_branch(value, definitions, nullable)
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def _convert_optional(node: dict[str, Any], definitions: dict[str, Any], nullable: bool) -> dict[str, Any]:
    branches = [branch for branch in node["anyOf"] if branch != _NULL]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    merged = {**branches[0], **rest} if len(branches) == 1 else {**rest, "anyOf": branches}
    result = _convert(merged, definitions, nullable)
    if nullable:
        result["nullable"] = True
    return result


def _junctor_branch(branch: dict[str, Any], definitions: dict[str, Any], nullable: bool) -> dict[str, Any]:
    converted = _convert(branch, definitions, nullable)
    # Kubernetes' int-or-string idiom is the one place where types sit inside anyOf.
    if set(converted) == {"type"}:
        return converted
    return {k: v for k, v in converted.items() if k not in _NOT_IN_JUNCTORS}


def to_json_schema(schema: dict[str, Any], *, open_paths: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """A Kubernetes openAPIV3Schema as JSON Schema 2020-12 that rejects unknown fields.

    Unknown fields are rejected like the API server's strict field validation does, except under
    `x-kubernetes-preserve-unknown-fields` and at `open_paths` (e.g. `("metadata",)`).
    """
    return _to_json(schema, (), open_paths)


def _to_json(node: dict[str, Any], path: tuple[str, ...], open_paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _to_json(sub, path + (name,), open_paths) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _to_json(value, path + (("*",) if key != "not" else ()), open_paths)
        elif key in _JUNCTORS:
            out[key] = [_to_json(branch, path, open_paths) for branch in value]
        elif key == "exclusiveMinimum" and value is True:
            out["exclusiveMinimum"] = node["minimum"]
        elif key == "exclusiveMaximum" and value is True:
            out["exclusiveMaximum"] = node["maximum"]
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = copy.deepcopy(value)
    if node.get("exclusiveMinimum") is True:
        out.pop("minimum", None)
    if node.get("exclusiveMaximum") is True:
        out.pop("maximum", None)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    elif node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    is_object = node.get("type") == "object" and "properties" in node
    if is_object and not node.get("x-kubernetes-preserve-unknown-fields") and path not in open_paths:
        out.setdefault("additionalProperties", False)
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in, the way the API server defaults an object.

    A missing property with a `default` gets a copy of it, then defaulting recurses into it, so
    `training: {}` expands to every nested default. The input is not modified.
    """
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, sub in schema["properties"].items():
            if name not in result and "default" in sub:
                result[name] = copy.deepcopy(sub["default"])
            if name in result:
                result[name] = apply_defaults(sub, result[name])
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value
