"""The LaneExperiment models: TR-4896 defaults, camelCase, strict validation with field paths,
and the same verdict from `parse_spec` and from the generated CRD schema for every bad spec."""

from __future__ import annotations

import copy
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import BaseModel

from lanex_operator.api import (
    InvalidSpecError,
    LaneExperimentSpec,
    LaneExperimentStatus,
    Phase,
    load_experiment_file,
    parse_spec,
    training_config_hash,
    validate_against_crd,
)
from lanex_operator.api.docs import fields_table
from lanex_operator.api.files import ExperimentFileError
from lanex_operator.api.quantity import QuantityError, max_quantity, parse_quantity
from lanex_operator.api.status import StorageMove

MINIMAL = {"dataset": {"synthetic": {}}}


def as_object(spec: Any, name: str = "exp") -> dict[str, Any]:
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": name}, "spec": spec}


def with_changes(path: str, value: Any, base: dict[str, Any] = MINIMAL) -> dict[str, Any]:
    """A copy of `base` with the dotted `path` set to `value` (intermediate mappings created)."""
    spec = copy.deepcopy(base)
    node = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


def test_an_empty_training_section_reproduces_tr4896_run():
    spec = parse_spec(MINIMAL)
    training = spec.training
    assert (training.workers, training.gpus_per_worker, training.batch_size) == (3, 1, 33)
    assert (training.loader_workers, training.use_workers) == (4, True)
    assert (training.validation.enabled, training.validation.batch_size) == (True, 99)
    assert (training.backend, training.backbone, training.large_shm) == ("horovod", "vgg16_bn", True)
    assert (training.height, training.width) == (288, 800)
    assert spec.dataset.size == "100Gi"
    assert spec.snapshot.enabled and spec.snapshot.on_failure is False
    assert (spec.retention.dataset, spec.retention.snapshots) == ("Retain", "Retain")
    assert spec.storage.service_level is None and spec.storage.training_service_level is None


def test_cluster_level_choices_are_left_to_the_operator_when_unset():
    spec = parse_spec(MINIMAL)
    assert spec.training.image is None
    assert spec.dataset.storage_class_name is None
    assert spec.snapshot.volume_snapshot_class_name is None
    assert (spec.scheduler.type, spec.scheduler.project) == (None, None)
    # What a spec names is kept as written.
    named = parse_spec({"dataset": {"synthetic": {}, "storageClassName": "fast"},
                        "training": {"image": "registry.example.com/trainer:2"},
                        "snapshot": {"volumeSnapshotClassName": "snap"}, "scheduler": {"type": "kubeflow"}})
    assert (named.training.image, named.dataset.storage_class_name, named.snapshot.volume_snapshot_class_name,
            named.scheduler.type) == ("registry.example.com/trainer:2", "fast", "snap", "kubeflow")


def test_yaml_names_are_camel_case_and_python_names_snake_case():
    spec = parse_spec(
        {
            "dataset": {"existingClaim": {"claimName": "tusimple"}, "storageClassName": "fast"},
            "training": {"gpusPerWorker": 2, "loaderWorkers": 1, "validation": {"batchSize": 7}},
            "snapshot": {"volumeSnapshotClassName": "snap", "readyTimeoutSeconds": 30},
            "storage": {"serviceLevel": "Standard", "trainingServiceLevel": "Premium"},
        }
    )
    assert spec.dataset.existing_claim is not None and spec.dataset.existing_claim.claim_name == "tusimple"
    assert spec.training.gpus_per_worker == 2 and spec.training.validation.batch_size == 7
    assert spec.storage.training_service_level == "Premium"
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["training"]["gpusPerWorker"] == 2
    assert dumped["snapshot"]["readyTimeoutSeconds"] == 30
    assert "gpus_per_worker" not in dumped["training"]
    assert parse_spec(dumped) == spec  # what the models write back, they read again


def test_quantities_may_be_written_as_integers_and_are_kept_as_text():
    spec = parse_spec(
        {"dataset": {"synthetic": {}, "size": 1073741824}, "training": {"resources": {"requests": {"cpu": 4}}}}
    )
    assert spec.dataset.size == "1073741824"
    assert spec.training.resources.requests == {"cpu": "4"}
    assert validate_against_crd(as_object({"dataset": {"synthetic": {}, "size": 1073741824}})) == []


def test_explicit_nulls_mean_unset_for_both_the_models_and_the_crd():
    spec = {"dataset": {"synthetic": {"seed": 3}, "download": None, "fromSnapshot": None}}
    assert parse_spec(spec).dataset.source_kind() == "synthetic"
    assert validate_against_crd(as_object(spec)) == []


# Each bad spec, the path parse_spec must blame, and the path the CRD schema must blame.
INVALID_SPECS = [
    ("wrong type", with_changes("training.workers", "three"), "spec.training.workers", "spec.training.workers"),
    ("bool as string", with_changes("snapshot.enabled", "yes"), "spec.snapshot.enabled", "spec.snapshot.enabled"),
    (
        "two dataset sources",
        with_changes("dataset.download", {"urls": [{"url": "https://data.example.com/a.zip"}]}),
        "spec.dataset: exactly one of",
        "spec.dataset",
    ),
    ("no dataset source", {"dataset": {"size": "10Gi"}}, "spec.dataset: exactly one of", "spec.dataset"),
    ("no dataset at all", {"training": {}}, "spec.dataset: required", "spec: 'dataset' is a required property"),
    ("zero workers", with_changes("training.workers", 0), "spec.training.workers: must be >= 1", "spec.training.workers"),
    ("bad size", with_changes("dataset.size", "100Zz"), "spec.dataset.size", "spec.dataset.size"),
    ("unknown scheduler", with_changes("scheduler", {"type": "slurm"}), "spec.scheduler.type", "spec.scheduler.type"),
    ("runai without project", with_changes("scheduler", {"type": "runai"}), "spec.scheduler.project", "spec.scheduler"),
    ("project without a type", with_changes("scheduler", {"project": "p"}), "spec.scheduler.project", "spec.scheduler"),
    (
        "kubeflow with project",
        with_changes("scheduler", {"type": "kubeflow", "project": "p"}),
        "spec.scheduler.project",
        "spec.scheduler",
    ),
    ("height not multiple of 16", with_changes("training.height", 100), "spec.training.height", "spec.training.height"),
    ("negative epochs", with_changes("training.epochs", -1), "spec.training.epochs: must be >= 1", "spec.training.epochs"),
    ("zero learning rate", with_changes("training.learningRate", 0.0), "spec.training.learningRate", "spec.training.learningRate"),
    ("unknown field", with_changes("training.gpu", 1), "spec.training.gpu: unknown field", "spec.training: Additional properties"),
    ("bad retention", with_changes("retention.snapshots", "Keep"), "spec.retention.snapshots", "spec.retention.snapshots"),
    (
        "env entry with a bad name",
        with_changes("training.env", [{"name": "MY VAR", "value": "1"}]),
        "spec.training.env[0].name",
        "spec.training.env[0].name",
    ),
    (
        "env entry with a number value",
        with_changes("training.env", [{"name": "OK", "value": 1}]),
        "spec.training.env[0].value",
        "spec.training.env[0].value",
    ),
    (
        "env entry overriding a TR-4896 variable",
        with_changes("training.env", [{"name": "BATCH_SIZE", "value": "8"}]),
        "spec.training.env[0].name: BATCH_SIZE is set by lanex",
        "spec.training.env[0].name",
    ),
    (
        "bad sha256",
        {"dataset": {"download": {"urls": [{"url": "https://data.example.com/a.zip", "sha256": "abc"}]}}},
        "spec.dataset.download.urls[0].sha256",
        "spec.dataset.download.urls[0].sha256",
    ),
    ("no urls", {"dataset": {"download": {"urls": []}}}, "spec.dataset.download.urls", "spec.dataset.download.urls"),
    ("unknown service level", with_changes("storage.serviceLevel", "Gold"), "spec.storage.serviceLevel", "spec.storage.serviceLevel"),
    ("zero gpus is fine but negative is not", with_changes("training.gpusPerWorker", -1), "spec.training.gpusPerWorker", "spec.training.gpusPerWorker"),
    ("zero iterations", with_changes("training.iterations", 0), "spec.training.iterations", "spec.training.iterations"),
    ("unknown backbone", with_changes("training.backbone", "resnet50"), "spec.training.backbone", "spec.training.backbone"),
    (
        "mlflow without an experiment name",
        with_changes("tracking", {"mlflow": {"trackingUri": "http://mlflow.example.com:5000"}}),
        "spec.tracking.mlflow.experimentName: required",
        "spec.tracking.mlflow: 'experimentName' is a required property",
    ),
    (
        "mlflow tracking uri that is not http",
        with_changes("tracking", {"mlflow": {"trackingUri": "file:///tmp/mlruns", "experimentName": "lanes"}}),
        "spec.tracking.mlflow.trackingUri",
        "spec.tracking.mlflow.trackingUri",
    ),
    (
        "mlflow experiment name that is too long",
        with_changes("tracking", {"mlflow": {"trackingUri": "http://mlflow:5000", "experimentName": "x" * 257}}),
        "spec.tracking.mlflow.experimentName: must have at most 256",
        "spec.tracking.mlflow.experimentName",
    ),
    (
        "mlflow credentials secret with a bad name",
        with_changes("tracking", {"mlflow": {"trackingUri": "http://mlflow:5000", "experimentName": "lanes",
                                             "credentialsSecretRef": {"name": "Team_Token"}}}),
        "spec.tracking.mlflow.credentialsSecretRef.name",
        "spec.tracking.mlflow.credentialsSecretRef.name",
    ),
    (
        "unknown tracking field",
        with_changes("tracking", {"mlflow": {"trackingUri": "http://mlflow:5000", "experimentName": "lanes",
                                             "token": "abc"}}),
        "spec.tracking.mlflow.token: unknown field",
        "spec.tracking.mlflow: Additional properties",
    ),
]


@pytest.mark.parametrize(("uri", "message"), [
    ("https://alice:secret@mlflow.example.com", "must not hold user:password; put credentials into a Secret named by"
                                                " credentialsSecretRef"),
    ("https://mlflow.example.com/?token=secret", "must not hold a query string; put it into a Secret named by"
                                                 " credentialsSecretRef"),
])
def test_credentials_in_the_mlflow_tracking_uri_are_refused_naming_the_field(uri, message):
    spec = with_changes("tracking", {"mlflow": {"trackingUri": uri, "experimentName": "lanes"}})
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(spec)
    assert caught.value.problems == [f"spec.tracking.mlflow.trackingUri: {message}"]


def test_mlflow_tracking_is_optional_and_keeps_the_training_config_hash():
    tracked = parse_spec(with_changes("tracking", {"mlflow": {"trackingUri": "http://mlflow:5000",
                                                              "experimentName": "lanes"}}))
    assert tracked.tracking.mlflow.log_best_checkpoint is False and tracked.tracking.mlflow.credentials_secret_ref is None
    assert parse_spec(MINIMAL).tracking is None
    assert training_config_hash(tracked) == training_config_hash(parse_spec(MINIMAL))
    assert validate_against_crd(as_object(with_changes("tracking", {"mlflow": {
        "trackingUri": "https://mlflow.example.com", "experimentName": "team/lanes", "logBestCheckpoint": True,
        "credentialsSecretRef": {"name": "mlflow-token"}}}))) == []


def test_resnet18_and_a_run_length_in_iterations_reach_the_train_command():
    from lanex_operator.plan.steps import plan_for

    spec = with_changes("training.iterations", 1500, with_changes("training.backbone", "resnet18"))
    assert validate_against_crd(as_object(spec)) == []
    command = plan_for("exp", "default", parse_spec(spec)).train.train_command
    assert command[command.index("--backbone") + 1] == "resnet18"
    assert command[command.index("--max-iterations") + 1] == "1500" and "--epochs" not in command
    by_epochs = plan_for("exp", "default", parse_spec(MINIMAL)).train.train_command
    assert by_epochs[by_epochs.index("--epochs") + 1] == "30" and "--max-iterations" not in by_epochs


@pytest.mark.parametrize(
    ("spec", "model_path", "crd_path"), [case[1:] for case in INVALID_SPECS], ids=[case[0] for case in INVALID_SPECS]
)
def test_invalid_spec_is_rejected_by_the_models_and_by_the_crd_schema(spec, model_path, crd_path):
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(spec)
    assert any(problem.startswith(model_path) for problem in caught.value.problems), caught.value.problems
    assert model_path in str(caught.value)

    problems = validate_against_crd(as_object(spec))
    assert any(problem.startswith(crd_path) for problem in problems), problems


def test_there_are_at_least_ten_kinds_of_invalid_spec():
    assert len({case[0] for case in INVALID_SPECS}) >= 10


def test_every_problem_is_reported_at_once_with_the_value_given():
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec({"dataset": {"synthetic": {"clips": 0}}, "training": {"workers": 0, "backend": "mpi"}})
    assert caught.value.problems == [
        "spec.dataset.synthetic.clips: must be >= 1 (got 0)",
        "spec.training.backend: must be one of 'horovod' or 'torch' (got 'mpi')",
        "spec.training.workers: must be >= 1 (got 0)",
    ]


def test_a_read_only_mapping_like_kopfs_spec_view_parses():
    view = MappingProxyType({"dataset": MappingProxyType({"synthetic": {"clips": 5}}), "training": {"env": ({"name": "A"},)}})
    spec = parse_spec(view)
    assert spec.dataset.synthetic is not None and spec.dataset.synthetic.clips == 5
    assert [entry.name for entry in spec.training.env] == ["A"]


def test_a_spec_that_is_not_a_mapping_is_invalid():
    with pytest.raises(InvalidSpecError, match="spec: must be an object"):
        parse_spec(["dataset"])


def _walk_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[str]:
    missing = []
    if model in seen:
        return missing
    seen.add(model)
    for name, field in model.model_fields.items():
        if not field.description:
            missing.append(f"{model.__name__}.{name}")
        for candidate in _model_types(field.annotation):
            missing += _walk_fields(candidate, seen)
    return missing


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for argument in getattr(annotation, "__args__", ()):
        found += _model_types(argument)
    return found


def test_every_spec_and_status_field_has_a_description():
    seen: set[type[BaseModel]] = set()
    assert _walk_fields(LaneExperimentSpec, seen) + _walk_fields(LaneExperimentStatus, seen) == []
    assert len(seen) >= 20  # the walk really reached the nested models


def test_config_hash_covers_the_effective_training_config_only():
    base = parse_spec(MINIMAL)
    explicit_defaults = parse_spec({"dataset": {"synthetic": {}}, "training": {"workers": 3, "batchSize": 33}})
    other_scheduler = parse_spec({**MINIMAL, "scheduler": {"type": "runai", "project": "lane-detection"}})
    bigger_batch = parse_spec({**MINIMAL, "training": {"batchSize": 34}})
    digest = training_config_hash(base)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert training_config_hash(explicit_defaults) == digest
    assert training_config_hash(other_scheduler) == digest
    assert training_config_hash(bigger_batch) != digest


def test_dataset_source_description_is_reproducible():
    spec = parse_spec(
        {"dataset": {"download": {"urls": [{"url": "https://d.example.com/a.zip", "sha256": "ab" * 32}, {"url": "file:///b"}]}}}
    )
    assert spec.dataset.source_description() == f"download:https://d.example.com/a.zip#sha256={'ab' * 32},file:///b"
    assert parse_spec({"dataset": {"synthetic": {"clips": 5, "seed": 2}}}).dataset.source_description() == (
        "synthetic:clips=5,seed=2"
    )


def test_status_reads_kopf_fields_and_writes_kubernetes_timestamps():
    status = LaneExperimentStatus.model_validate(
        {
            "phase": "Training",
            "kopf": {"progress": {"reconcile": {"retries": 1}}},
            "conditions": [{"type": "DatasetReady", "status": "True", "lastTransitionTime": "2025-01-02T03:04:05Z"}],
            "storageMoves": [{"from": "Standard", "to": "Premium", "result": "Succeeded"}],
        }
    )
    assert status.phase is Phase.TRAINING
    assert status.storage_moves == [StorageMove(from_level="Standard", to="Premium", result="Succeeded")]
    written = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert written["conditions"][0]["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert written["storageMoves"][0]["from"] == "Standard"
    assert "kopf" not in written
    assert validate_against_crd({**as_object(MINIMAL), "status": {**written, "kopf": {"x": 1}}}) == []


def test_quantities_compare_by_value():
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("1.5e3") == 1500
    assert max_quantity("100Gi", "107374182401") == "107374182401"
    assert max_quantity("100Gi", "50G") == "100Gi"
    with pytest.raises(QuantityError, match="'100Zz' is not a Kubernetes quantity"):
        parse_quantity("100Zz")


def test_experiment_file_errors_name_the_file_and_the_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: lanex.dev/v1alpha1\nkind: LaneExperiment\nmetadata: {name: ok}\n"
        "spec:\n  dataset: {synthetic: {}}\n  training: {workers: 0}\n"
    )
    with pytest.raises(ExperimentFileError) as caught:
        load_experiment_file(bad)
    assert caught.value.problems == [f"{bad}: spec.training.workers: must be >= 1 (got 0)"]


def test_experiment_file_checks_kind_name_and_yaml(tmp_path: Path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: " + "x" * 43 + "}\nspec: {dataset: {synthetic: {}}}\n")
    with pytest.raises(ExperimentFileError) as caught:
        load_experiment_file(wrong)
    message = str(caught.value)
    assert "apiVersion: must be lanex.dev/v1alpha1" in message and "kind: must be LaneExperiment" in message
    assert "metadata.name: must have at most 42 characters" in message

    broken = tmp_path / "broken.yaml"
    broken.write_text("spec:\n  dataset: [\n")
    with pytest.raises(ExperimentFileError, match=r"broken.yaml: invalid YAML at line \d+"):
        load_experiment_file(broken)
    with pytest.raises(ExperimentFileError, match="missing.yaml: cannot read"):
        load_experiment_file(tmp_path / "missing.yaml")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("apiVersion: lanex.dev/v1alpha1\n", encoding="utf-16")
    with pytest.raises(ExperimentFileError, match=r"utf16.yaml: not UTF-8 text: byte offset 0 \(0xff\): invalid start byte"):
        load_experiment_file(utf16)


def test_experiment_file_returns_metadata_and_spec(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "apiVersion: lanex.dev/v1alpha1\nkind: LaneExperiment\nmetadata: {name: demo, namespace: team}\n"
        "spec:\n  dataset: {synthetic: {clips: 12}}\n"
    )
    metadata, spec = load_experiment_file(good)
    assert metadata == {"name": "demo", "namespace": "team"}
    assert spec.dataset.synthetic is not None and spec.dataset.synthetic.clips == 12


def test_docs_table_lists_every_field_with_its_default():
    table = fields_table()
    assert table.startswith("| Field | Type | Required | Default | Description |")
    assert "| `spec.training.workers` | integer |  | `3` |" in table
    assert "| `spec.dataset.size` | quantity |  | `\"100Gi\"` |" in table
    for field in ("spec.scheduler.type", "spec.training.image", "spec.dataset.storageClassName",
                  "spec.snapshot.volumeSnapshotClassName"):  # no default: the operator's cluster default applies
        (row,) = [line for line in table.splitlines() if line.startswith(f"| `{field}` |")]
        assert row.split(" | ")[3] == "" and "unset: the operator's default (chart value defaults." in row, row
    assert "`spec.training.env[].name`" in table and "`spec.storage.trainingServiceLevel`" in table
