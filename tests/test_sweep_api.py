"""The LaneSweep API: validation naming the parameter, the generated CRD, deterministic trials, and the
sweep decisions (median stopping rule, best trial, retention, parallelism) as pure functions."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from lanex_operator.api.models import InvalidSpecError
from lanex_operator.api.sweep import (
    EarlyStoppingSpec,
    parse_sweep_spec,
    trial_count,
    trial_name,
    trial_parameters,
    trial_spec,
)
from lanex_operator.api.sweep_crd import build_sweep_crd, validate_sweep_against_crd
from lanex_operator.api.sweep_files import load_sweep_file
from lanex_operator.plan.sweep import TrialView, best_trial, counts, median_stop, next_trials, retained, to_stop

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "lanex.dev_lanesweeps.yaml"
CHART_CRD = ROOT / "charts" / "lanex-operator" / "crds" / "lanex.dev_lanesweeps.yaml"

BASE = {
    "template": {"dataset": {"synthetic": {"clips": 4}}, "training": {"epochs": 3, "backbone": "small"}},
    "parameters": [{"path": "learningRate", "values": [0.01, 0.02, 0.04]}, {"path": "batchSize", "values": [4, 8]}],
}


def spec_with(**changes):
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return spec


def problems_of(spec) -> list[str]:
    with pytest.raises(InvalidSpecError) as caught:
        parse_sweep_spec(spec)
    return caught.value.problems


# --- validation ----------------------------------------------------------------------------------


def test_unknown_parameter_path_is_an_error_naming_the_parameter():
    assert problems_of(spec_with(parameters=[{"path": "learningRat", "values": [0.1]}])) == [
        "spec.parameters[0] (learningRat): unknown field of spec.template.training"]


def test_values_the_experiment_model_rejects_are_errors_naming_the_parameter_and_the_value():
    problems = problems_of(spec_with(parameters=[{"path": "learningRate", "values": [0.1, 20, "fast"]}]))
    assert problems == [
        "spec.parameters[0] (learningRate): value 20 is rejected: spec.template.training.learningRate: must be <= 10.0 (got 20)",
        "spec.parameters[0] (learningRate): value 'fast' is rejected: spec.template.training.learningRate: must be a "
        "number (got 'fast')"]


def test_nested_paths_and_range_ends_are_validated_too():
    problems = problems_of(spec_with(algorithm={"type": "random", "maxTrials": 3},
                                     parameters=[{"path": "validation.batchSize", "min": 0, "max": 8, "type": "int"}]))
    assert problems == ["spec.parameters[0] (validation.batchSize): value 0 is rejected: "
                        "spec.template.training.validation.batchSize: must be >= 1 (got 0)"]


def test_grid_with_a_range_random_without_max_trials_and_duplicate_paths_are_refused():
    assert problems_of(spec_with(parameters=[{"path": "learningRate", "min": 0.01, "max": 0.1}])) == [
        "spec.algorithm.type: grid needs values for every parameter (a range has none): learningRate"]
    assert problems_of(spec_with(algorithm={"type": "random"})) == ["spec.algorithm.maxTrials: required with algorithm random"]
    duplicate = [{"path": "epochs", "values": [1]}, {"path": "epochs", "values": [2]}]
    assert problems_of(spec_with(parameters=duplicate)) == ["spec.parameters: parameter path epochs appears twice"]


def test_template_is_validated_by_the_experiment_models():
    bad = spec_with(template={"dataset": {}, "training": {"workers": 0}})
    problems = problems_of(bad)
    assert any(p.startswith("spec.template.dataset:") and "exactly one of" in p for p in problems)
    assert "spec.template.training.workers: must be >= 1 (got 0)" in problems


# --- trials --------------------------------------------------------------------------------------


def test_grid_trials_are_every_combination_in_order_with_deterministic_names():
    spec = parse_sweep_spec(BASE)
    assert trial_count(spec) == 6
    assert trial_parameters(spec) == [
        {"learningRate": 0.01, "batchSize": 4}, {"learningRate": 0.01, "batchSize": 8},
        {"learningRate": 0.02, "batchSize": 4}, {"learningRate": 0.02, "batchSize": 8},
        {"learningRate": 0.04, "batchSize": 4}, {"learningRate": 0.04, "batchSize": 8}]
    assert [trial_name("lr", i) for i in (0, 5)] == ["lr-000", "lr-005"]


def test_random_trials_are_the_same_for_the_same_seed_within_bounds_and_differ_for_another():
    parameters = [{"path": "learningRate", "min": 0.001, "max": 0.1, "scale": "log"},
                  {"path": "batchSize", "min": 2, "max": 16, "type": "int"},
                  {"path": "backbone", "values": ["small", "vgg16_bn"]}]
    first = trial_parameters(parse_sweep_spec(spec_with(algorithm={"type": "random", "seed": 3, "maxTrials": 20},
                                                        parameters=parameters)))
    again = trial_parameters(parse_sweep_spec(spec_with(algorithm={"type": "random", "seed": 3, "maxTrials": 20},
                                                        parameters=parameters)))
    other = trial_parameters(parse_sweep_spec(spec_with(algorithm={"type": "random", "seed": 4, "maxTrials": 20},
                                                        parameters=parameters)))
    assert first == again and first != other and len(first) == 20
    assert all(0.001 <= t["learningRate"] <= 0.1 and 2 <= t["batchSize"] <= 16 and isinstance(t["batchSize"], int)
               for t in first)
    assert {t["backbone"] for t in first} == {"small", "vgg16_bn"}


def test_a_trial_restores_the_sweep_snapshot_and_keeps_the_rest_of_the_template():
    spec = parse_sweep_spec(spec_with(template={"dataset": {"synthetic": {"clips": 4}, "size": "7Gi",
                                                            "storageClassName": "fast"},
                                                "training": {"epochs": 3}, "snapshot": {"onFailure": True}}))
    trial = trial_spec(spec, {"learningRate": 0.02, "batchSize": 8}, "lr-dataset")
    assert trial.dataset.source_kind() == "fromSnapshot" and trial.dataset.from_snapshot.snapshot_name == "lr-dataset"
    assert (trial.dataset.size, trial.dataset.storage_class_name) == ("7Gi", "fast")
    assert (trial.training.learning_rate, trial.training.batch_size, trial.training.epochs) == (0.02, 8, 3)
    assert trial.snapshot.on_failure is True


# --- CRD -----------------------------------------------------------------------------------------


def test_checked_in_sweep_crd_and_chart_copy_are_the_generated_one():
    assert yaml.safe_load(CRD_FILE.read_text()) == build_sweep_crd(), (
        "run `python -m lanex_operator.api.sweep_crd crds/lanex.dev_lanesweeps.yaml`")
    assert CHART_CRD.read_bytes() == CRD_FILE.read_bytes(), "run `python scripts/sync_chart_crd.py`"
    printed = subprocess.run([sys.executable, "-m", "lanex_operator.api.sweep_crd"], check=True, capture_output=True,
                             text=True, timeout=60)
    assert printed.stdout == CRD_FILE.read_text()


def test_sweep_crd_is_a_valid_crd_with_short_name_status_and_printer_columns():
    crd = build_sweep_crd()
    assert kubernetes_validate.validate(crd, "1.30", strict=True) == "1.30"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("LaneSweep", "lanesweeps", ["lxs"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Trials", "Running", "Best",
                                                                        "Objective", "Age"]


def test_the_crd_schema_accepts_the_example_and_rejects_what_the_models_reject():
    document = yaml.safe_load((ROOT / "examples" / "sweep-quickstart.yaml").read_text())
    assert validate_sweep_against_crd(document) == []
    bad = copy.deepcopy(document)
    bad["spec"]["parallelism"] = 0
    bad["spec"]["template"]["training"]["workers"] = "two"
    problems = validate_sweep_against_crd(bad)
    assert any(p.startswith("spec.parallelism:") for p in problems)
    assert any(p.startswith("spec.template.training.workers:") for p in problems)


def test_the_example_sweep_file_loads():
    metadata, spec = load_sweep_file(ROOT / "examples" / "sweep-quickstart.yaml")
    assert metadata["name"] == "sweep-quickstart" and trial_count(spec) == 3


# --- decisions -----------------------------------------------------------------------------------


def history(*values, metric="accuracy"):
    return tuple({"epoch": epoch, metric: value} for epoch, value in enumerate(values, start=1))


RULE = EarlyStoppingSpec(min_epochs=2, min_trials=2)


def test_median_rule_stops_a_trial_below_the_median_of_the_others_at_the_same_epoch():
    others = [TrialView("t1", {}, "Training", history(0.5, 0.8, 0.9)), TrialView("t2", {}, "Succeeded", history(0.5, 0.7))]
    lagging = TrialView("t3", {}, "Training", history(0.5, 0.6))
    decision = median_stop(lagging, others + [lagging], RULE, "accuracy")
    assert decision is not None and (decision.epoch, decision.value, decision.median, decision.compared) == (2, 0.6, 0.75, 2)
    assert "worse than the median 0.7500 of 2 other trial(s)" in decision.message("accuracy")


def test_median_rule_keeps_a_trial_at_or_above_the_median_before_min_epochs_or_with_too_few_peers():
    others = [TrialView("t1", {}, "Training", history(0.2, 0.8)), TrialView("t2", {}, "Training", history(0.2, 0.6))]
    assert median_stop(TrialView("t3", {}, "Training", history(0.1, 0.7)), others, RULE, "accuracy") is None
    # epoch 1 is below the median but before minEpochs
    assert median_stop(TrialView("t3", {}, "Training", history(0.1)), others, RULE, "accuracy") is None
    # only one other trial reached epoch 2
    assert median_stop(TrialView("t3", {}, "Training", history(0.2, 0.1)), others[:1], RULE, "accuracy") is None


def test_median_rule_minimizes_fp_and_fn():
    others = [TrialView("t1", {}, "Training", history(0.3, 0.2, metric="fp")),
              TrialView("t2", {}, "Training", history(0.3, 0.1, metric="fp"))]
    assert median_stop(TrialView("t3", {}, "Training", history(0.3, 0.4, metric="fp")), others, RULE, "fp") is not None
    assert median_stop(TrialView("t3", {}, "Training", history(0.3, 0.05, metric="fp")), others, RULE, "fp") is None


def test_best_trial_retention_counts_and_parallelism():
    spec = parse_sweep_spec(spec_with(parallelism=2, retention={"keepBest": 1},
                                      earlyStopping={"minEpochs": 2, "minTrials": 2}))
    trials = [TrialView("s-000", {}, "Succeeded", objective=0.91), TrialView("s-001", {}, "Succeeded", objective=0.95),
              TrialView("s-002", {}, "Failed"), TrialView("s-003", {}, "Training"), TrialView("s-004", {}, None),
              TrialView("s-005", {}, None)]
    assert best_trial(spec, trials).name == "s-001"
    assert retained(spec, trials) == {"s-001"}
    assert counts(trials) == {"pending": 2, "running": 1, "succeeded": 2, "failed": 1, "stopped": 0}
    assert [t.name for t in next_trials(spec, trials)] == ["s-004"]
    assert to_stop(spec, trials) == []
    minimize = parse_sweep_spec(spec_with(objective={"metric": "fn"}))
    assert best_trial(minimize, trials).name == "s-000"


def test_docs_sweep_reference_is_generated_from_the_models():
    # The docs site's LaneSweep page (tools/docs/ref_api.py) is built from the same rows as the table.
    sys.path.insert(0, str(ROOT / "tools" / "docs"))
    try:
        import ref_api
    finally:
        sys.path.remove(str(ROOT / "tools" / "docs"))
    from lanex_operator.api.sweep_crd import sweep_fields_table

    page = ref_api.sweep_page()
    for row in sweep_fields_table().splitlines()[2:]:
        assert row.split(" | ", 1)[0] + " |" in page
