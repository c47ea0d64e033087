"""The generated CRD: checked in verbatim, a valid structural apiextensions/v1 object for
Kubernetes 1.30, defaults identical to the models', and a status that keeps kopf's fields."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml

from lanex_operator.api import InvalidSpecError, LaneExperimentSpec, build_crd, parse_spec, validate_against_crd
from lanex_operator.api.schema import apply_defaults

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "lanex.dev_laneexperiments.yaml"
JUNCTORS = ("oneOf", "anyOf", "allOf", "not")


def open_api() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every structural node (not junctor branches) with its path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def junctor_branches(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in JUNCTORS:
        value = schema.get(key)
        for branch in value if isinstance(value, list) else [value] if isinstance(value, dict) else []:
            yield branch
            yield from junctor_branches(branch)
            for sub in branch.get("properties", {}).values():
                yield sub


def test_checked_in_crd_is_the_generated_one():
    assert yaml.safe_load(CRD_FILE.read_text()) == build_crd(), (
        "crds/lanex.dev_laneexperiments.yaml is stale: run `python -m lanex_operator.api.crd crds/lanex.dev_laneexperiments.yaml`"
    )


def test_crd_module_prints_the_checked_in_file():
    printed = subprocess.run(
        [sys.executable, "-m", "lanex_operator.api.crd"], check=True, capture_output=True, text=True, timeout=60
    )
    assert printed.stdout == CRD_FILE.read_text()
    assert printed.stderr == ""


def test_crd_validates_as_a_kubernetes_1_30_object():
    assert kubernetes_validate.validate(build_crd(), "1.30", strict=True) == "1.30"


def test_names_scope_subresource_and_printer_columns():
    crd = build_crd()
    assert crd["metadata"]["name"] == "laneexperiments.lanex.dev"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("lanex.dev", "Namespaced")
    assert spec["names"]["kind"] == "LaneExperiment" and spec["names"]["shortNames"] == ["lx"]
    version = spec["versions"][0]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Progress", "ETA", "Workers", "Accuracy", "Snapshot", "Age"]
    schema = open_api()
    for column, path in columns.items():
        if path.startswith(".metadata"):
            continue
        node = schema
        for part in path.strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] in ("string", "integer", "number"), column


def test_schema_is_structural():
    problems = []
    for path, node in nodes(open_api()):
        if set(node) & {"$ref", "$defs", "title", "definitions"}:
            problems.append(f"{path}: non-structural key")
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: no type")
        if node.get("additionalProperties") is False or ("properties" in node and "additionalProperties" in node):
            problems.append(f"{path}: additionalProperties next to properties")
        for branch in junctor_branches(node):
            if branch in ({"type": "integer"}, {"type": "string"}) and node.get("x-kubernetes-int-or-string"):
                continue
            forbidden = set(branch) & {"type", "description", "default", "nullable", "additionalProperties", "title"}
            if forbidden:
                problems.append(f"{path}: {sorted(forbidden)} inside a junctor")
            for name in branch.get("properties", {}):
                if name not in node.get("properties", {}):
                    problems.append(f"{path}: junctor names {name}, not a property")
    assert problems == []


def test_only_metadata_name_is_restricted():
    metadata = open_api()["properties"]["metadata"]
    assert metadata == {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 42, "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}},
    }


def test_every_spec_field_is_described():
    undocumented = [path for path, node in nodes(open_api()["properties"]["spec"]) if path and not node.get("description")]
    # map values (`{}`) and list items of scalars describe themselves through their parent
    assert [path for path in undocumented if not path.endswith(("{}", "[]"))] == []


def test_every_default_is_valid_for_its_own_field():
    problems = []
    import jsonschema

    from lanex_operator.api.schema import to_json_schema

    for path, node in nodes(open_api()):
        if "default" in node:
            sub = to_json_schema({k: v for k, v in node.items() if k != "default"})
            for error in jsonschema.Draft202012Validator(sub).iter_errors(apply_defaults(node, node["default"])):
                problems.append(f"{path}: {error.message}")
    assert problems == []


@pytest.mark.parametrize(
    "spec",
    [
        {"dataset": {"synthetic": {}}},
        {"dataset": {"fromSnapshot": {"snapshotName": "s"}}, "training": {"validation": {}}, "scheduler": {}},
        {"dataset": {"existingClaim": {"claimName": "c"}}, "scheduler": {"type": "runai", "project": "p"}},
        {"dataset": {"synthetic": {}, "storageClassName": "fast"}, "training": {"image": "r.example.com/t:1"},
         "snapshot": {"volumeSnapshotClassName": "snap"}, "scheduler": {"type": "kubeflow"}},
    ],
)
def test_api_server_defaulting_gives_the_models_defaults(spec):
    schema = open_api()["properties"]["spec"]
    defaulted = apply_defaults(schema, spec)
    expected = parse_spec(spec).model_dump(mode="json", by_alias=True, exclude_none=True)
    # the models also materialise empty maps and lists; the API server leaves them out
    assert _drop_empty(defaulted) == _drop_empty(expected)
    assert LaneExperimentSpec.model_validate(defaulted) == parse_spec(spec)


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    return value


def test_cross_field_rules_are_also_cel_rules_for_the_api_server():
    spec = open_api()["properties"]["spec"]["properties"]
    dataset_rule = spec["dataset"]["x-kubernetes-validations"][0]["rule"]
    scheduler_rule = spec["scheduler"]["x-kubernetes-validations"][0]["rule"]
    assert "filter(x, x).size() == 1" in dataset_rule and all(
        f"has(self.{source})" in dataset_rule for source in ("download", "synthetic", "existingClaim", "fromSnapshot")
    )
    assert scheduler_rule == "has(self.type) && self.type == 'runai' ? has(self.project) : !has(self.project)"
    assert spec["training"]["properties"]["env"]["x-kubernetes-list-map-keys"] == ["name"]


def test_cluster_level_fields_have_no_api_server_default():
    # An API-server default would always win over the operator's cluster defaults (the chart's values).
    spec = open_api()["properties"]["spec"]["properties"]
    for section, field in (("training", "image"), ("dataset", "storageClassName"),
                           ("snapshot", "volumeSnapshotClassName"), ("scheduler", "type")):
        node = spec[section]["properties"][field]
        assert "default" not in node and "unset: the operator's default" in node["description"], (section, field)
    assert apply_defaults(open_api()["properties"]["spec"], {"dataset": {"synthetic": {}}})["scheduler"] == {}


@pytest.mark.parametrize("scheduler,accepted", [
    ({}, True), ({"type": "kubeflow"}, True), ({"type": "runai", "project": "p"}, True),
    ({"type": "runai"}, False), ({"project": "p"}, False), ({"type": "kubeflow", "project": "p"}, False),
])
def test_scheduler_schema_and_models_agree_on_type_and_project(scheduler, accepted):
    document = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": "x"},
                "spec": {"dataset": {"synthetic": {}}, "scheduler": scheduler}}
    crd_problems = validate_against_crd(document)
    assert (crd_problems == []) is accepted, crd_problems
    try:
        parse_spec(document["spec"])
    except InvalidSpecError as error:
        assert not accepted, error.problems
        assert any(problem.startswith("spec.scheduler") for problem in error.problems)
    else:
        assert accepted


def test_status_keeps_unknown_fields_but_types_the_known_ones():
    status = open_api()["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert "Succeeded" in status["properties"]["phase"]["enum"]
    base = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": "x"}}
    base["spec"] = {"dataset": {"synthetic": {}}}
    kopf_written = {**base, "status": {"kopf": {"progress": {}}, "create_fn": {"done": True}, "phase": "Pending"}}
    assert validate_against_crd(kopf_written) == []
    wrong_phase = {**base, "status": {"phase": "Dancing"}}
    assert [problem.split(":")[0] for problem in validate_against_crd(wrong_phase)] == ["status.phase"]


def test_validate_against_crd_checks_kind_and_name():
    problems = validate_against_crd(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"}, "spec": {"dataset": {"synthetic": {}}}}
    )
    assert problems[0].startswith("apiVersion: must be lanex.dev/v1alpha1")
    assert problems[1].startswith("kind: must be LaneExperiment")
    assert problems[2].startswith("metadata.name:")
