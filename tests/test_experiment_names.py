"""Experiment names: every name derived from one stays valid for the strictest upstream rule.

mpi-operator v0.8.2 (pkg/apis/kubeflow/validation) refuses an MPIJob whose `<name>-worker-<N-1>`
is not a DNS-1035 label, and names the workers' Service after the MPIJob; the Job controller puts
the Job's name in a label (63 characters) and names pods `<job>-<5 random>`. The API enforces one
rule on `metadata.name` that keeps all of them valid, in the models and as a CEL rule in the CRD.
"""

from __future__ import annotations

import cel
import pytest

from lanex_operator.api.crd import NAME_CEL_RULE, build_crd
from lanex_operator.api.models import (
    MAX_EXPERIMENT_NAME_LENGTH,
    MAX_WORKERS,
    InvalidSpecError,
    LaneExperimentSpec,
    check_experiment_name,
)
from lanex_operator.api.sweep import MAX_SWEEP_NAME_LENGTH, check_sweep_name
from lanex_operator.api.sweep_crd import SWEEP_NAME_CEL_RULE, build_sweep_crd
from lanex_operator.plan.steps import derived_names, longest_valid_name_length
from lanex_operator.plan.sweep import longest_valid_sweep_name_length, sweep_derived_names

SPEC = LaneExperimentSpec.model_validate({"dataset": {"synthetic": {}}})
LONGEST = "a" + "b" * (MAX_EXPERIMENT_NAME_LENGTH - 1)


def test_the_longest_allowed_name_is_what_the_name_builders_allow():
    assert longest_valid_name_length() == MAX_EXPERIMENT_NAME_LENGTH == 42


def test_every_derived_name_of_the_longest_name_is_valid_at_the_most_workers():
    names = derived_names(LONGEST, SPEC, workers=MAX_WORKERS)
    assert [name.problem() for name in names if name.problem()] == []
    by_what = {name.what: name for name in names}
    assert by_what["worker hostname"].value == f"{LONGEST}-train-worker-511"
    assert by_what["worker hostname"].rule == by_what["MPIJob (the workers' Service)"].rule == "DNS-1035 label"
    assert len(by_what["launcher pod"].value) == 63


def test_one_character_more_breaks_the_launcher_pod_name():
    problems = [name.problem() for name in derived_names(LONGEST + "c", SPEC, workers=MAX_WORKERS) if name.problem()]
    assert problems == [f"launcher pod '{LONGEST}c-train-launcher-xxxxx' is longer than 63 characters (DNS-1123 label)"]


@pytest.mark.parametrize("name", ["3gpu-run", "-lanes", "lanes-", "Lanes", "lanes_1", "a.b", LONGEST + "c"])
def test_an_invalid_name_is_refused_naming_metadata_name_the_rule_and_the_longest_length(name):
    with pytest.raises(InvalidSpecError) as caught:
        check_experiment_name(name)
    message = str(caught.value)
    assert message.startswith("metadata.name: must ")
    assert "DNS-1035 label" in message and "starting with a letter" in message and "at most 42 characters" in message
    assert repr(name) in message


@pytest.mark.parametrize("name", ["3gpu-run", "gpu-run-3", "a", "lanes", "-x", "x-", "X", LONGEST, LONGEST + "c",
                                  "a1-2-3", "quickstart"])
def test_the_crd_cel_rule_on_metadata_name_agrees_with_the_models(name):
    crd_rules = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert [rule["rule"] for rule in crd_rules] == [NAME_CEL_RULE]
    assert "metadata.name must be a DNS-1035 label" in crd_rules[0]["message"]
    try:
        check_experiment_name(name)
        accepted = True
    except InvalidSpecError:
        accepted = False
    assert cel.evaluate(NAME_CEL_RULE, {"self": {"metadata": {"name": name}}}) is accepted


# --- LaneSweeps: the same rule, computed from every name derived from a sweep's ------------------

SWEEP_LONGEST = "s" + "w" * (MAX_SWEEP_NAME_LENGTH - 1)


def test_the_longest_allowed_sweep_name_is_what_its_trials_and_its_dataset_plan_allow():
    assert longest_valid_sweep_name_length() == MAX_SWEEP_NAME_LENGTH == 34


def test_every_name_derived_from_the_longest_sweep_name_is_valid_and_one_more_breaks_its_dataset_plan():
    names = sweep_derived_names(SWEEP_LONGEST)
    assert [name.problem() for name in names if name.problem()] == []
    values = {name.value for name in names}
    assert {f"{SWEEP_LONGEST}-998", f"{SWEEP_LONGEST}-998-train-worker-511", f"{SWEEP_LONGEST}-dataset",
            f"{SWEEP_LONGEST}-dataset-data", f"{SWEEP_LONGEST}-dataset-prepare-xxxxx"} <= values
    problems = [name.problem() for name in sweep_derived_names(SWEEP_LONGEST + "x") if name.problem()]
    assert problems == [f"dataset plan {SWEEP_LONGEST}x-dataset: launcher pod '{SWEEP_LONGEST}x-dataset-train-"
                        f"launcher-xxxxx' is longer than 63 characters (DNS-1123 label)"]


@pytest.mark.parametrize("name", ["3lr-sweep", "-lr", "lr-", "Lr", "lr_1", "a.b", "lr\n", SWEEP_LONGEST + "x"])
def test_an_invalid_sweep_name_is_refused_naming_metadata_name_and_the_rule(name):
    with pytest.raises(InvalidSpecError) as caught:
        check_sweep_name(name)
    message = str(caught.value)
    assert message.startswith("metadata.name: must ")
    assert "DNS-1035 label" in message and "starting with a letter" in message and "at most 34 characters" in message
    assert repr(name) in message


def test_a_sweep_named_with_a_leading_digit_would_have_unnamable_trials_and_dataset():
    problems = [name.problem() for name in sweep_derived_names("3lr") if name.problem()]
    assert "trial 3lr-998: LaneExperiment '3lr-998' is not a DNS-1035 label" in problems
    assert "dataset plan 3lr-dataset: LaneExperiment '3lr-dataset' is not a DNS-1035 label" in problems


@pytest.mark.parametrize("name", ["3lr", "lr-3", "a", "lr", "-x", "x-", "X", SWEEP_LONGEST, SWEEP_LONGEST + "x",
                                  "lr\n", "sweep-quickstart"])
def test_the_sweep_crd_cel_rule_on_metadata_name_agrees_with_the_models(name):
    schema = build_sweep_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert [rule["rule"] for rule in schema["x-kubernetes-validations"]] == [SWEEP_NAME_CEL_RULE]
    assert "metadata.name must be a DNS-1035 label" in schema["x-kubernetes-validations"][0]["message"]
    assert schema["properties"]["metadata"]["properties"]["name"]["maxLength"] == MAX_SWEEP_NAME_LENGTH
    try:
        check_sweep_name(name)
        accepted = True
    except InvalidSpecError:
        accepted = False
    assert cel.evaluate(SWEEP_NAME_CEL_RULE, {"self": {"metadata": {"name": name}}}) is accepted


# --- full matches: Python's `$` also matches before a trailing newline ------------------------------


def test_a_trailing_newline_makes_every_name_invalid():
    for check in (check_experiment_name, check_sweep_name):
        with pytest.raises(InvalidSpecError):
            check("quick\n")
    assert not any(name.problem() is None for name in derived_names("quick\n", SPEC))
    from lanex_operator.api.quantity import is_quantity
    from lanex_operator.local.secrets import SecretSourceError, parse_secret_option
    from lanex_operator.plan.defaults import runai_project_of

    assert not is_quantity("100Gi\n")
    with pytest.raises(SecretSourceError):
        parse_secret_option("mirror\n=env:X")
    with pytest.raises(InvalidSpecError):
        runai_project_of("runai-lanes\n")


def test_lanex_run_refuses_an_experiment_named_with_a_trailing_newline(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    spec_file = tmp_path / "quick.yaml"
    spec_file.write_text('apiVersion: lanex.dev/v1alpha1\nkind: LaneExperiment\nmetadata: {name: "quick\\n"}\n'
                         "spec: {dataset: {synthetic: {clips: 4}}}\n")
    ran = subprocess.run([str(Path(sys.executable).with_name("lanex")), "run", str(spec_file), "--workspace",
                          str(tmp_path / "ws")], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 2, ran.stderr
    assert f"{spec_file}: metadata.name: must be a DNS-1035 label" in ran.stderr and "'quick\\n'" in ran.stderr
    assert not (tmp_path / "ws" / "experiments").exists()


def test_the_emulated_apiserver_refuses_a_name_with_a_trailing_newline_as_the_real_one_does():
    """Go's `$` is the end of the text: the CRD's pattern and CEL rule refuse `quick\\n` (the emulator's checks
    must not be Python's `$`, or tests would accept what a cluster refuses)."""
    from k8s.harness import load_crd
    from k8s.schema_check import CrdSchema

    schema = CrdSchema(load_crd(), "v1alpha1")
    body = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": "quick\n"},
            "spec": {"dataset": {"synthetic": {}}}}
    _, problems = schema.admit(body, None, "Strict")
    assert [p.split(": ", 1)[0] for p in problems] == ["metadata.name", "metadata.name", "<nil>"], problems
    assert "a lowercase RFC 1123 subdomain must consist of" in problems[0]  # ObjectMeta's own rule
    assert "metadata.name in body should match" in problems[1]  # the CRD's pattern, read as Go reads it
    assert "metadata.name must be a DNS-1035 label" in problems[2]  # the CRD's CEL rule
    body["metadata"]["name"] = "quick"
    assert schema.admit(body, None, "Strict")[1] == []
