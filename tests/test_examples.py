"""Every example experiment is valid for the models and the CRD, builds valid children, and says
what the docs promise (quickstart: local synthetic demo; TR-4896's run on RUN:ai; ...)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from lanex_operator.api import load_experiment_file, validate_against_crd
from lanex_operator.controller.builders import mpijob_for, prepare_job_for, pvc_for, restore_pvc_for, snapshot_for
from lanex_operator.plan.steps import plan_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SWEEP_FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if "\nkind: LaneSweep\n" in p.read_text())
FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if p not in SWEEP_FILES)


def test_the_four_documented_examples_exist():
    assert {path.name for path in FILES} >= {
        "quickstart.yaml",
        "tusimple-runai-3gpu.yaml",
        "restore-from-snapshot.yaml",
        "kubeflow-torch-ddp.yaml",
    }


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_example_is_valid_for_the_models_and_the_crd(path: Path):
    metadata, spec = load_experiment_file(path)
    assert metadata["name"] == path.stem
    (document,) = list(yaml.safe_load_all(path.read_text()))
    assert validate_against_crd(document) == []


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_example_builds_valid_children(path: Path):
    metadata, spec = load_experiment_file(path)
    meta = {"name": metadata["name"], "namespace": metadata.get("namespace", "default")}
    plan = plan_for(meta["name"], meta["namespace"], spec)
    if plan.dataset.restore_from:
        builtins = [restore_pvc_for(meta, spec, plan, "100Gi")]
    elif plan.dataset.creates_claim:
        builtins = [pvc_for(meta, spec, plan)]
    else:
        builtins = []
    if plan.prepare is not None:
        builtins.append(prepare_job_for(meta, spec, plan))
    for replica in mpijob_for(meta, spec, plan)["spec"]["mpiReplicaSpecs"].values():
        builtins.append({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": replica["template"]})
    for manifest in builtins:
        assert kubernetes_validate.validate(manifest, "1.30", strict=True) == "1.30"
    if plan.snapshot is not None:
        snapshot = snapshot_for(meta, spec, plan, datetime(2025, 1, 1, tzinfo=timezone.utc))
        assert snapshot["metadata"]["name"] == f"{meta['name']}-20250101000000"


def test_quickstart_is_a_small_local_synthetic_run():
    _, spec = load_experiment_file(EXAMPLES / "quickstart.yaml")
    assert spec.dataset.synthetic is not None
    assert spec.dataset.synthetic.seed == 0 and 1 <= spec.dataset.synthetic.clips <= 500  # minutes on a CPU
    training = spec.training
    assert (training.workers, training.gpus_per_worker, training.backbone, training.backend) == (2, 0, "small", "torch")
    assert (training.height, training.width) == (144, 400)
    assert 1 <= training.epochs <= 30
    assert spec.snapshot.enabled
    # Nothing cluster-specific: on a cluster the operator's defaults pick image and classes.
    assert (training.image, spec.dataset.storage_class_name, spec.snapshot.volume_snapshot_class_name) == (
        None, None, None)


def test_tusimple_runai_example_is_tr4896s_run():
    metadata, spec = load_experiment_file(EXAMPLES / "tusimple-runai-3gpu.yaml")
    assert metadata["namespace"] == "runai-lane-detection"
    assert spec.dataset.download is not None
    hosts = {urlparse(entry.url).hostname for entry in spec.dataset.download.urls}
    assert hosts == {"datasets.example.com"}  # placeholders, documented as to be replaced
    assert all(entry.url.startswith("https://") for entry in spec.dataset.download.urls)
    training = spec.training
    assert (training.workers, training.gpus_per_worker, training.loader_workers) == (3, 1, 4)
    # The published recipe (SCNN_Pytorch exp0): global batch ~32, lr 0.15 after linear scaling, 1500 steps, 288x512.
    assert training.workers * training.batch_size == 33 and training.iterations == 1500
    assert training.learning_rate * training.workers == pytest.approx(0.15)
    assert (training.height, training.width, training.backbone) == (288, 512, "vgg16_bn")
    command = plan_for(metadata["name"], metadata["namespace"], spec).train.train_command
    assert "--max-iterations" in command and "--epochs" not in command
    assert training.validation.enabled is False and training.backend == "horovod"
    assert (spec.scheduler.type, spec.scheduler.project) == ("runai", "lane-detection")
    assert spec.snapshot.enabled
    assert "replace" in (EXAMPLES / "tusimple-runai-3gpu.yaml").read_text().lower()
    # credentials by Secret name only; torchvision's official VGG16-BN file, whose full digest the user fills in
    # (torchvision publishes only its first 8 hex digits, in the file name: no integrity check for a download)
    assert {entry.secret_ref.name for entry in spec.dataset.download.urls if entry.secret_ref} == {"tusimple-mirror"}
    weights = training.pretrained_weights
    assert weights is not None and weights.sha256 is not None
    assert weights.url == "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
    assert len(weights.sha256) == 64 and weights.sha256.startswith("6c64b313")
    assert "sha256sum" in (EXAMPLES / "tusimple-runai-3gpu.yaml").read_text()


def test_restore_and_kubeflow_examples_show_their_feature():
    _, restore = load_experiment_file(EXAMPLES / "restore-from-snapshot.yaml")
    assert restore.dataset.from_snapshot is not None
    _, kubeflow = load_experiment_file(EXAMPLES / "kubeflow-torch-ddp.yaml")
    assert (kubeflow.scheduler.type, kubeflow.training.backend) == ("kubeflow", "torch")


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[path.name for path in SWEEP_FILES])
def test_sweep_example_is_valid_and_every_trial_builds_valid_children(path: Path):
    from lanex_operator.api.sweep import dataset_snapshot_name, trial_name, trial_parameters, trial_spec
    from lanex_operator.api.sweep_crd import validate_sweep_against_crd
    from lanex_operator.api.sweep_files import load_sweep_file

    metadata, spec = load_sweep_file(path)
    assert metadata["name"] == path.stem
    assert validate_sweep_against_crd(yaml.safe_load(path.read_text())) == []
    snapshot = dataset_snapshot_name(metadata["name"])
    for index, parameters in enumerate(trial_parameters(spec)):
        name = trial_name(metadata["name"], index)
        trial = trial_spec(spec, parameters, snapshot)
        meta = {"name": name, "namespace": "default"}
        plan = plan_for(name, "default", trial)
        assert plan.prepare is None and plan.dataset.restore_from == snapshot
        manifests = [restore_pvc_for(meta, trial, plan, "5Gi")] + [
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": replica["template"]}
            for replica in mpijob_for(meta, trial, plan)["spec"]["mpiReplicaSpecs"].values()]
        for manifest in manifests:
            assert kubernetes_validate.validate(manifest, "1.30", strict=True) == "1.30"
