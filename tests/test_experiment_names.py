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
from lanex_operator.plan.steps import derived_names, longest_valid_name_length

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
