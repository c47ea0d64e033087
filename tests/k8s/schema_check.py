"""What the apiserver checks when a custom resource is written: its CRD's structural schema and CEL rules.

Why it exists: the emulator used to store whatever it was sent, so a field that the real MPIJob or
VolumeSnapshot CRD does not declare, a wrong type, or a name that breaks a rule passed every test and
failed on the first real cluster. `CrdSchema` applies one CRD version's openAPIV3Schema the way the
apiserver does (k8s.io/apiextensions-apiserver: structural schema validation, pruning, defaulting,
`x-kubernetes-validations` in CEL), with:

* unknown fields: with `fieldValidation=Strict` (kubectl's default) a 400 `strict decoding error:
  unknown field "spec.x"`, as the apiserver answers; with Warn or Ignore they are pruned;
* nulls in non-nullable fields pruned before validation, defaults filled in;
* CEL rules evaluated with the CEL library `cel` (common-expression-language), property names escaped
  as Kubernetes does (`namespace` -> `__namespace__`); transition rules (those naming `oldSelf`) only
  on updates of a value that existed before;
* ratcheting (CRDValidationRatcheting, on by default since Kubernetes 1.30): a value unchanged by an
  update is not validated again, so an old invalid object can still get a finalizer or a status;
* `metadata`: the name must be a DNS-1123 subdomain, label keys and values valid (ObjectMeta rules).

Error messages follow the apiserver's `field.Error` wording (`spec.x: Invalid value: ...: ...`).
"""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Mapping
from typing import Any

import cel

CEL_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
                "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}


def go_pattern(pattern: str) -> str:
    """An OpenAPI pattern as the apiserver's Go regexp reads it: a final `$` is the end of the text, where
    Python's `$` also matches before a trailing newline (so `^[a-z]+$` would accept "quick\\n")."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}
_PROGRAMS: dict[str, Any] = {}


class UnknownFields(Exception):
    """Strict field validation found fields the schema does not declare (the apiserver answers 400)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(", ".join(f'unknown field "{path}"' for path in paths))
        self.paths = paths


def escape_property(name: str) -> str:
    """A property name as CEL sees it (k8s.io/apiserver/pkg/cel: Escape)."""
    if name in CEL_RESERVED:
        return f"__{name}__"
    return (name.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__")
            .replace("/", "__slash__"))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if isinstance(value, str):
        return f'"{value}"'
    return str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(value: Any) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                       ("array", list), ("object", dict)):
        if isinstance(value, kind):
            return name
    return "null"


class CrdSchema:
    """The openAPIV3Schema of one served version of a CRD."""

    def __init__(self, crd: Mapping[str, Any], version: str) -> None:
        spec = crd["spec"]
        self.kind = spec["names"]["kind"]
        self.group = spec["group"]
        served = next(v for v in spec["versions"] if v["name"] == version)
        self.root = ((served.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object",
                                                                              "x-kubernetes-preserve-unknown-fields": True}

    def admit(self, obj: dict[str, Any], old: dict[str, Any] | None, field_validation: str) -> tuple[dict[str, Any], list[str]]:
        """(the object pruned and defaulted, the problems); raises UnknownFields under Strict."""
        unknown: list[str] = []
        value = self._prune(self.root, obj, "", unknown, top=True)
        if old is not None and unknown:
            # An undeclared field already stored (an object written around the schema, as some tests do)
            # and left unchanged is kept and not reported: ratcheting, for what the apiserver never stored.
            before: list[str] = []
            self._prune(self.root, old, "", before, top=True)
            kept = [path for path in unknown if path in before and _at(obj, path) == _at(old, path)]
            unknown = [path for path in unknown if path not in kept]
            value = _restore(value, obj, kept)
        if unknown and field_validation == "Strict":
            raise UnknownFields(unknown)
        value = self._default(self.root, value)
        problems = self._metadata(value)
        self._check(self.root, value, old, "", problems)
        return value, problems

    def defaulted(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object with the schema's defaults (what the apiserver does to objects read from storage)."""
        return self._default(self.root, obj)

    def invalid_message(self, name: str, problems: list[str]) -> str:
        """The apiserver's 422 message."""
        joined = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
        return f'{self.kind}.{self.group} "{name}" is invalid: {joined}'

    # ---- pruning and defaulting (before validation, as the apiserver does)

    def _prune(self, schema: Mapping[str, Any], value: Any, path: str, unknown: list[str], top: bool = False) -> Any:
        if isinstance(value, dict):
            if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema \
                    and "additionalProperties" not in schema:
                return value
            properties = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            result = {}
            for key, item in value.items():
                sub_path = f"{path}.{key}" if path else key
                if top and key in ("apiVersion", "kind", "metadata"):
                    result[key] = item
                elif item is None and not (properties.get(key) or {}).get("nullable"):
                    continue  # nulls in non-nullable fields are pruned
                elif key in properties:
                    result[key] = self._prune(properties[key], item, sub_path, unknown)
                elif isinstance(extra, dict):
                    result[key] = self._prune(extra, item, sub_path, unknown)
                elif schema.get("x-kubernetes-preserve-unknown-fields") or extra is True:
                    result[key] = item
                elif schema.get("x-kubernetes-embedded-resource") and key in ("apiVersion", "kind", "metadata"):
                    result[key] = item
                else:
                    unknown.append(sub_path)
            return result
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [self._prune(schema["items"], item, f"{path}[{index}]", unknown) for index, item in enumerate(value)]
        return value

    def _default(self, schema: Mapping[str, Any], value: Any) -> Any:
        if isinstance(value, dict):
            result = dict(value)
            for key, sub in (schema.get("properties") or {}).items():
                if key not in result and "default" in sub:
                    result[key] = copy.deepcopy(sub["default"])
                if key in result:
                    result[key] = self._default(sub, result[key])
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for key in result:
                    if key not in (schema.get("properties") or {}):
                        result[key] = self._default(extra, result[key])
            return result
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [self._default(schema["items"], item) for item in value]
        return value

    # ---- metadata (ObjectMeta validation)

    @staticmethod
    def _metadata(obj: Mapping[str, Any]) -> list[str]:
        problems = []
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        if name and (len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name)):
            problems.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                            f"lower case alphanumeric characters, '-' or '.', and must start and end with an "
                            f"alphanumeric character")
        problems += label_problems(meta.get("labels") or {}, "metadata.labels")
        return problems

    # ---- validation

    def _check(self, schema: Mapping[str, Any], value: Any, old: Any, path: str, problems: list[str],
               structural: bool = True) -> None:
        if old is not None and old == value and structural:
            return  # ratcheting: an unchanged value is not validated again
        where = path or "<nil>"
        if value is None:
            if not schema.get("nullable") and structural and "type" in schema:
                problems.append(f'{where}: Invalid value: "null": {where} in body must be of type {schema["type"]}: "null"')
            return
        if not self._type_ok(schema, value):
            wanted = schema.get("type")
            problems.append(f'{where}: Invalid value: "{_type_name(value)}": {where} in body must be of type '
                            f'{wanted}: "{_type_name(value)}"')
            return
        self._values(schema, value, where, problems)
        for junctor in ("allOf", "anyOf", "oneOf"):
            branches = schema.get(junctor)
            if not branches:
                continue
            passing = 0
            for branch in branches:
                found: list[str] = []
                self._check(branch, value, None, path, found, structural=False)
                passing += not found
            if (junctor == "allOf" and passing < len(branches)) or (junctor == "anyOf" and passing == 0):
                problems.append(f'{where}: Invalid value: {_describe(value)}: must validate {junctor}')
            if junctor == "oneOf" and passing != 1:
                problems.append(f'{where}: Invalid value: {_describe(value)}: must validate one and only one schema '
                                f"(oneOf). Found {'none' if passing == 0 else passing} valid alternatives")
        if isinstance(schema.get("not"), dict):
            found = []
            self._check(schema["not"], value, None, path, found, structural=False)
            if not found:
                problems.append(f"{where}: Invalid value: {_describe(value)}: must not validate the schema (not)")
        if isinstance(value, dict):
            properties = schema.get("properties") or {}
            for key in schema.get("required") or []:
                if key not in value:
                    problems.append(f"{path + '.' if path else ''}{key}: Required value")
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                sub = properties.get(key) if key in properties else (extra if isinstance(extra, dict) else None)
                if sub is not None:
                    sub_old = old.get(key) if isinstance(old, dict) else None
                    self._check(sub, item, sub_old, f"{path}.{key}" if path else key, problems, structural)
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                sub_old = old[index] if isinstance(old, list) and index < len(old) else None
                self._check(schema["items"], item, sub_old, f"{path}[{index}]", problems, structural)
        if structural:
            self._rules(schema, value, old, where, problems)

    @staticmethod
    def _type_ok(schema: Mapping[str, Any], value: Any) -> bool:
        if schema.get("x-kubernetes-int-or-string"):
            return isinstance(value, (int, str)) and not isinstance(value, bool)
        wanted = schema.get("type")
        if wanted is None:
            return True
        if wanted == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if wanted == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, _TYPES[wanted])

    @staticmethod
    def _values(schema: Mapping[str, Any], value: Any, where: str, problems: list[str]) -> None:
        shown = _describe(value)
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(f'"{item}"' if isinstance(item, str) else str(item) for item in schema["enum"])
            problems.append(f"{where}: Unsupported value: {shown}: supported values: {allowed}")
        if isinstance(value, str):
            if "pattern" in schema and not re.search(go_pattern(schema["pattern"]), value):
                problems.append(f'{where}: Invalid value: {shown}: {where} in body should match \'{schema["pattern"]}\'')
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                problems.append(f"{where}: Too long: may not be more than {schema['maxLength']} bytes")
            if "minLength" in schema and len(value) < schema["minLength"]:
                problems.append(f"{where}: Invalid value: {shown}: {where} in body should be at least "
                                f"{schema['minLength']} chars long")
            if schema.get("format") == "date-time":
                try:
                    datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    problems.append(f"{where}: Invalid value: {shown}: {where} in body must be of type date-time")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema:
                low, exclusive = schema["minimum"], schema.get("exclusiveMinimum") is True
                if value < low or (exclusive and value == low):
                    problems.append(f"{where}: Invalid value: {value}: {where} in body should be greater than "
                                    f"{'' if exclusive else 'or equal to '}{low}")
            if "maximum" in schema:
                high, exclusive = schema["maximum"], schema.get("exclusiveMaximum") is True
                if value > high or (exclusive and value == high):
                    problems.append(f"{where}: Invalid value: {value}: {where} in body should be less than "
                                    f"{'' if exclusive else 'or equal to '}{high}")
            if "multipleOf" in schema and value % schema["multipleOf"]:
                problems.append(f"{where}: Invalid value: {value}: {where} in body should be a multiple of "
                                f"{schema['multipleOf']}")
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                problems.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
            if "minItems" in schema and len(value) < schema["minItems"]:
                problems.append(f"{where}: Invalid value: {len(value)}: {where} in body should have at least "
                                f"{schema['minItems']} items")
            keys = schema.get("x-kubernetes-list-map-keys")
            if schema.get("x-kubernetes-list-type") == "map" and keys:
                seen = set()
                for index, item in enumerate(value):
                    key = tuple((item or {}).get(k) for k in keys) if isinstance(item, dict) else (item,)
                    if key in seen:
                        problems.append(f"{where}[{index}]: Duplicate value: {_describe(dict(zip(keys, key)))}")
                    seen.add(key)

    def _rules(self, schema: Mapping[str, Any], value: Any, old: Any, where: str, problems: list[str]) -> None:
        for rule in schema.get("x-kubernetes-validations") or []:
            text = rule["rule"]
            transition = re.search(r"\boldSelf\b", text) is not None
            if transition and old is None:
                continue  # transition rules only apply to updates of an existing value
            activation = {"self": cel_value(schema, value)}
            if transition:
                activation["oldSelf"] = cel_value(schema, old)
            program = _PROGRAMS.get(text)
            if program is None:
                program = _PROGRAMS[text] = cel.compile(text)
            try:
                passed = program.execute(activation)
            except Exception as error:  # the apiserver reports an evaluation error as the rule failing
                problems.append(f"{where}: Invalid value: {_describe(value)}: rule evaluation error: {error}")
                continue
            if passed is not True:  # field.Invalid at the rule's node (or its fieldPath), with its message
                field = rule.get("fieldPath")
                target = f"{where}{field}" if field and where != "<nil>" else (field.lstrip(".") if field else where)
                message = rule.get("message") or f"failed rule: {text}"
                problems.append(f"{target}: Invalid value: {_describe(value)}: {message}")


def _parts(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", path)]


def _at(value: Any, path: str) -> Any:
    for part in _parts(path):
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _restore(pruned: Any, original: Any, paths: list[str]) -> Any:
    """`pruned` with the fields at `paths` put back from `original`."""
    for path in paths:
        parts = _parts(path)
        node = pruned
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = copy.deepcopy(_at(original, path))
    return pruned


def cel_value(schema: Mapping[str, Any], value: Any) -> Any:
    """`value` as CEL sees it: declared property names escaped, everything else as is."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        result = {}
        for key, item in value.items():
            if key in properties:
                result[escape_property(key)] = cel_value(properties[key], item)
            elif key == "metadata" and "metadata" not in properties:
                result[key] = {k: v for k, v in (item or {}).items() if k in ("name", "generateName")}
            else:
                result[key] = cel_value(extra if isinstance(extra, dict) else {}, item)
        return result
    if isinstance(value, list):
        return [cel_value(schema.get("items") or {}, item) for item in value]
    return value


def label_problems(labels: Mapping[str, Any], where: str) -> list[str]:
    """ObjectMeta's label rules: qualified keys, values of at most 63 characters."""
    problems = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if len(name) > 63 or not LABEL_NAME.fullmatch(name) or (prefix and not DNS_SUBDOMAIN.fullmatch(prefix)):
            problems.append(f'{where}: Invalid value: "{key}": name part must consist of alphanumeric characters, '
                            f"'-', '_' or '.', and must start and end with an alphanumeric character")
        text = str(value)
        if len(text) > 63:
            problems.append(f'{where}: Invalid value: "{text}": must be no more than 63 characters')
        elif not LABEL_VALUE.fullmatch(text):
            problems.append(f'{where}: Invalid value: "{text}": a valid label must be an empty string or consist of '
                            f"alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
                            f"character")
    return problems
