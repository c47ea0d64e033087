"""What lanex creates, checked against rules nobody here wrote: the upstream CRDs and mpi-operator v0.8.2.

The emulator serves the real MPIJob and VolumeSnapshot(Class, Content) CRDs from ../shared/upstream/
(unmodified) and admits writes as the apiserver does (schema, unknown fields, CEL rules); the
simulated mpi-operator applies upstream's own checks and launcher policy (`k8s.mpi_rules`). On a
clone without ../shared/upstream/ the tests that need those CRDs skip and say why.
"""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import kubernetes_validate
import pytest
import yaml

from k8s.harness import UPSTREAM_MISSING, EmulatedCluster, load_crd, upstream_crds
from k8s.schema_check import CrdSchema, UnknownFields
from lanex_operator.api.models import MAX_EXPERIMENT_NAME_LENGTH
from lanex_operator.cli.render import render_file
from lanex_operator.controller import desired
from lanex_operator.api import load_experiment_file
from lanex_operator.plan.steps import plan_for

pytestmark = pytest.mark.timeout(120)

REPO = pathlib.Path(__file__).resolve().parents[1]
LANEX = pathlib.Path(sys.executable).with_name("lanex")
KUBECTL = pathlib.Path(sys.executable).with_name("kubectl")
# LaneExperiment examples; a LaneSweep example's trials are checked below (test_sweep_example_trials_...).
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if "\nkind: LaneSweep\n" not in p.read_text())
SWEEP_EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if p not in EXAMPLES)
UPSTREAM = {(crd["spec"]["group"], crd["spec"]["names"]["kind"]): crd for crd in upstream_crds()}
requires_upstream = pytest.mark.skipif(not UPSTREAM, reason=UPSTREAM_MISSING)
LONGEST = "l" + "x" * (MAX_EXPERIMENT_NAME_LENGTH - 1)


def schema_of(obj: dict[str, Any]) -> CrdSchema | None:
    group, _, version = obj["apiVersion"].rpartition("/")
    crd = UPSTREAM.get((group, obj["kind"]))
    return CrdSchema(crd, version) if crd is not None else None


def upstream_problems(obj: dict[str, Any]) -> list[str]:
    """The apiserver's verdict on one object: an upstream CRD's schema and CEL rules (Strict), or the
    Kubernetes 1.30 schema of a built-in kind (kubernetes-validate, strict)."""
    schema = schema_of(obj)
    if schema is None:
        try:
            kubernetes_validate.validate(obj, "1.30", strict=True)
        except kubernetes_validate.ValidationError as error:
            return [str(error)]
        return []
    try:
        _, problems = schema.admit(copy.deepcopy(obj), None, "Strict")
    except UnknownFields as error:
        return [str(error)]
    return problems


def longest_name_variant(tmp_path: pathlib.Path, example: pathlib.Path) -> pathlib.Path:
    document = yaml.safe_load(example.read_text())
    document["metadata"]["name"] = LONGEST
    document["spec"].setdefault("training", {})["workers"] = 512
    path = tmp_path / f"longest-{example.name}"
    path.write_text(yaml.safe_dump(document))
    return path


@requires_upstream
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_render_of_each_example_and_its_longest_name_is_accepted_by_the_upstream_schemas(example, tmp_path):
    for path in (example, longest_name_variant(tmp_path, example)):
        objects = render_file(path, environ={})
        kinds = [obj["kind"] for obj in objects]
        assert "MPIJob" in kinds and kinds.index("MPIJob") == len(kinds) - 1 - ("VolumeSnapshot" in kinds)
        for obj in objects:
            assert upstream_problems(obj) == [], (path.name, obj["kind"], obj["metadata"]["name"])


@requires_upstream
def test_an_undeclared_field_is_found_by_the_upstream_mpijob_schema():
    metadata, spec = load_experiment_file(EXAMPLES[0])
    objects = render_file(EXAMPLES[0], environ={})
    mpijob = next(obj for obj in objects if obj["kind"] == "MPIJob")
    mpijob["spec"]["runPolicy"]["cleanupPolicy"] = "Running"  # a typo of cleanPodPolicy
    mpijob["spec"]["slotsPerWorker"] = "1"
    problems = upstream_problems(mpijob)
    assert problems == ['unknown field "spec.runPolicy.cleanupPolicy"']
    del mpijob["spec"]["runPolicy"]["cleanupPolicy"]
    assert upstream_problems(mpijob) == ['spec.slotsPerWorker: Invalid value: "string": spec.slotsPerWorker in body '
                                         'must be of type integer: "string"']


def run_lanex(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LANEX), *args], capture_output=True, text=True, timeout=60)


def test_render_refuses_3gpu_run_with_exit_2_and_the_same_message_as_lanex_run(tmp_path):
    spec_file = tmp_path / "3gpu-run.yaml"
    spec_file.write_text("apiVersion: lanex.dev/v1alpha1\nkind: LaneExperiment\nmetadata: {name: 3gpu-run}\n"
                         "spec: {dataset: {synthetic: {clips: 4}}, training: {workers: 3}}\n")
    rendered = run_lanex("render", str(spec_file))
    assert rendered.returncode == 2 and rendered.stdout == ""
    assert f"{spec_file}: metadata.name: must be a DNS-1035 label" in rendered.stderr
    assert "at most 42 characters" in rendered.stderr and "'3gpu-run'" in rendered.stderr
    ran = run_lanex("run", str(spec_file), "--workspace", str(tmp_path / "ws"))
    assert ran.returncode == 2
    assert ran.stderr.strip() == rendered.stderr.strip()


def test_render_of_a_sweep_file_says_it_renders_experiments_and_exits_2():
    rendered = run_lanex("render", str(REPO / "examples" / "sweep-quickstart.yaml"))
    assert rendered.returncode == 2 and rendered.stdout == ""
    assert "kind LaneSweep: `lanex render` renders a LaneExperiment" in rendered.stderr
    assert "unknown field" not in rendered.stderr  # not the experiment model's errors about a sweep's fields


def test_render_prints_yaml_and_json_in_the_order_the_operator_creates_them():
    text = run_lanex("render", str(REPO / "examples" / "quickstart.yaml"), "-n", "team-b")
    assert text.returncode == 0, text.stderr
    documents = [doc for doc in yaml.safe_load_all(text.stdout) if doc]
    assert [(doc["kind"], doc["metadata"]["name"], doc["metadata"]["namespace"]) for doc in documents] == [
        ("PersistentVolumeClaim", "quickstart-data", "team-b"), ("Job", "quickstart-prepare", "team-b"),
        ("MPIJob", "quickstart-train", "team-b"), ("VolumeSnapshot", "quickstart-20000101000000", "team-b")]
    assert documents[2]["spec"]["launcherCreationPolicy"] == "WaitForWorkersReady"
    as_json = json.loads(run_lanex("render", str(REPO / "examples" / "quickstart.yaml"), "-n", "team-b",
                                   "-o", "json").stdout)
    assert as_json["kind"] == "List" and as_json["items"] == documents


def test_render_uses_the_cluster_defaults_from_the_environment_or_the_chart_values(tmp_path):
    example = REPO / "examples" / "quickstart.yaml"
    built_in = render_file(example, environ={})
    assert built_in[0]["spec"]["storageClassName"] == "azurenetappfiles"
    from_env = render_file(example, environ={"LANEX_DEFAULT_STORAGE_CLASS": "standard-rwx",
                                             "LANEX_TRAINER_IMAGE": "registry.local/trainer:1"})
    assert from_env[0]["spec"]["storageClassName"] == "standard-rwx"
    assert from_env[2]["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.local/trainer:1"
    values = tmp_path / "values.yaml"
    values.write_text("defaults:\n  volumeSnapshotClassName: csi-azuredisk-vsc\n")
    from_chart = render_file(example, values_file=values, environ={})
    assert from_chart[-1]["spec"]["volumeSnapshotClassName"] == "csi-azuredisk-vsc"
    values.write_text("defaults:\n  storageClass: x\n")
    refused = run_lanex("render", str(example), "--values", str(values))
    assert refused.returncode == 2 and "defaults.storageClass: unknown value" in refused.stderr


def test_render_builds_what_the_operator_creates():
    metadata, spec = load_experiment_file(REPO / "examples" / "quickstart.yaml")
    plan = plan_for("quickstart", "default", spec)
    body = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
            "metadata": {"name": "quickstart", "namespace": "default", "uid": "00000000-0000-0000-0000-000000000000",
                         "generation": 1}, "spec": {}}
    rendered = render_file(REPO / "examples" / "quickstart.yaml", environ={})
    assert rendered[2] == desired.training_job(body, spec, plan)
    assert rendered[1] == desired.prepare_job(body, spec, plan)


# ---- the emulator with the upstream CRDs


def http(cluster: EmulatedCluster, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    content = "application/merge-patch+json" if method == "PATCH" else "application/json"
    request = urllib.request.Request(cluster.url + path, data=data, method=method, headers={"Content-Type": content})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def rendered_mpijob(name: str = "quickstart", **kwargs: Any) -> dict[str, Any]:
    metadata, spec = load_experiment_file(REPO / "examples" / "quickstart.yaml")
    plan = plan_for(name, "default", spec)
    body = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
            "metadata": {"name": name, "namespace": "default", "uid": "u-1", "generation": 1}, "spec": {}}
    job = desired.training_job(body, spec, plan, **kwargs)
    del job["metadata"]["ownerReferences"]  # no owner in these tests: nothing to garbage-collect it
    return job


MPIJOBS = "/apis/kubeflow.org/v2beta1/namespaces/default/mpijobs"
SNAPSHOTS = "/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots"


@requires_upstream
def test_emulator_refuses_undeclared_fields_like_the_apiserver_with_strict_field_validation(api_server):
    # POST: 400 BadRequest (handlers/create.go transformDecodeError); PATCH: 422 (handlers/patch.go)
    job = rendered_mpijob()
    job["spec"]["launcherPolicy"] = "WaitForWorkersReady"
    status, answer = http(api_server, "POST", MPIJOBS + "?fieldValidation=Strict", job)
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert answer["message"] == ('MPIJob in version "v2beta1" cannot be handled as a MPIJob: strict decoding error: '
                                 'unknown field "spec.launcherPolicy"')
    api_server.knobs.paused.add("MPIJob")  # keep the simulated mpi-operator off this one
    status, created = http(api_server, "POST", MPIJOBS + "?fieldValidation=Ignore", job)
    assert status == 201 and "launcherPolicy" not in created["spec"]  # pruned, as the apiserver does
    assert created["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    status, answer = http(api_server, "PATCH", MPIJOBS + "/quickstart-train?fieldValidation=Strict",
                          {"spec": {"runPolicy": {"cleanUp": "All"}}})
    assert (status, answer["reason"]) == (422, "Invalid")  # a PATCH: the apiserver's jsonPatcher answers 422
    assert answer["message"].startswith(' "" is invalid: patch: Invalid value: ')
    assert answer["message"].endswith('strict decoding error: unknown field "spec.runPolicy.cleanUp"')
    job["metadata"]["name"] = "typed"
    del job["spec"]["launcherPolicy"]
    job["spec"]["slotsPerWorker"] = "one"
    status, answer = http(api_server, "POST", MPIJOBS, job)
    assert (status, answer["reason"]) == (422, "Invalid")
    assert answer["message"] == ('MPIJob.kubeflow.org "typed" is invalid: spec.slotsPerWorker: Invalid value: '
                                 '"string": spec.slotsPerWorker in body must be of type integer: "string"')


@requires_upstream
def test_emulator_evaluates_the_volumesnapshot_cel_rules(api_server):
    api_server.knobs.paused.add("VolumeSnapshot")
    both = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "both"},
            "spec": {"source": {"persistentVolumeClaimName": "a", "volumeSnapshotContentName": "b"}}}
    status, answer = http(api_server, "POST", SNAPSHOTS, both)
    assert status == 422 and "exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set" \
        in answer["message"]
    empty = {**both, "metadata": {"name": "empty"},
             "spec": {"volumeSnapshotClassName": "", "source": {"persistentVolumeClaimName": "a"}}}
    status, answer = http(api_server, "POST", SNAPSHOTS, empty)
    assert status == 422 and answer["message"] == (
        'VolumeSnapshot.snapshot.storage.k8s.io "empty" is invalid: spec.volumeSnapshotClassName: Invalid value: "": '
        "volumeSnapshotClassName must not be the empty string when set")
    good = {**both, "metadata": {"name": "good"}, "spec": {"source": {"persistentVolumeClaimName": "a"}}}
    assert http(api_server, "POST", SNAPSHOTS, good)[0] == 201
    status, answer = http(api_server, "PATCH", SNAPSHOTS + "/good",
                          {"spec": {"source": {"persistentVolumeClaimName": "other"}}})
    assert status == 422 and "persistentVolumeClaimName is immutable" in answer["message"]  # a transition rule
    content = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
               "metadata": {"name": "content"},
               "spec": {"deletionPolicy": "Delete", "driver": "csi.trident.netapp.io",
                        "source": {"volumeHandle": "v"}, "volumeSnapshotRef": {"name": "good"}}}
    status, answer = http(api_server, "POST", "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents", content)
    assert status == 422  # the rule reads `self.__namespace__`: CEL's escaping of the reserved word
    assert "both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set" in answer["message"]


@requires_upstream
def test_kubectl_apply_refuses_3gpu_run_by_the_crd_cel_rule(api_server, tmp_path):
    spec_file = tmp_path / "3gpu-run.yaml"
    spec_file.write_text("apiVersion: lanex.dev/v1alpha1\nkind: LaneExperiment\nmetadata: {name: 3gpu-run}\n"
                         "spec: {dataset: {synthetic: {clips: 4}}}\n")
    result = subprocess.run([str(KUBECTL), "--kubeconfig", str(api_server.kubeconfig), "apply", "--validate=false",
                             "-f", str(spec_file)], capture_output=True, text=True, timeout=40)
    assert result.returncode == 1, result.stdout
    assert 'LaneExperiment.lanex.dev "3gpu-run" is invalid' in result.stderr
    assert "metadata.name must be a DNS-1035 label" in result.stderr
    assert api_server.get("laneexperiments", "3gpu-run", "default") is None


def events_of(cluster: EmulatedCluster, name: str) -> list[dict[str, Any]]:
    return [e for e in cluster.list("events", "default", api_version="v1")
            if (e.get("involvedObject") or {}).get("name") == name]


def pods_of(cluster: EmulatedCluster, mpijob: str, role: str) -> list[dict[str, Any]]:
    return cluster.list("pods", "default", f"training.kubeflow.org/job-name={mpijob},"
                                           f"training.kubeflow.org/job-role={role}", api_version="v1")


def test_simulated_mpi_operator_refuses_a_worker_hostname_that_is_no_dns1035_label(api_server):
    job = rendered_mpijob()
    job["metadata"]["name"] = "3gpu-run-train"  # a valid object name, but not a DNS-1035 label
    api_server.create(job)
    api_server.wait_for(lambda: ("refused", "3gpu-run-train") in api_server.sim.history, message="the refusal")
    [event] = events_of(api_server, "3gpu-run-train")
    assert (event["type"], event["reason"]) == ("Warning", "ValidationError")
    assert event["message"] == (
        'Found validation errors: metadata.name: Invalid value: "3gpu-run-train": will not able to create pod and '
        'service with invalid DNS label "3gpu-run-train-worker-1": a DNS-1035 label must consist of lower case '
        "alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character "
        "(e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
    assert pods_of(api_server, "3gpu-run-train", "launcher") == pods_of(api_server, "3gpu-run-train", "worker") == []
    assert (api_server.get("mpijobs", "3gpu-run-train", "default") or {}).get("status") is None


def test_wait_for_workers_ready_creates_the_launcher_only_once_every_worker_is_ready(api_server):
    api_server.knobs.unready_workers.add("quickstart-train")
    api_server.create(rendered_mpijob())
    api_server.wait_for(lambda: len(pods_of(api_server, "quickstart-train", "worker")) == 2 and
                        ("waiting-for-workers", "quickstart-train") in api_server.sim.history,
                        message="the workers, not Ready")
    assert pods_of(api_server, "quickstart-train", "launcher") == []
    api_server.knobs.unready_workers.clear()
    api_server.wait_for(lambda: pods_of(api_server, "quickstart-train", "launcher"), message="the launcher")
    history = [step for step in api_server.sim.history if step[0] in ("worker-ready", "launcher-created")]
    assert sorted(history[:2]) == [("worker-ready", "quickstart-train-worker-0"),
                                   ("worker-ready", "quickstart-train-worker-1")]
    assert history[2] == ("launcher-created", "quickstart-train")


def test_at_startup_the_launcher_starts_while_the_workers_are_not_ready(api_server):
    api_server.knobs.unready_workers.add("quickstart-train")
    api_server.create(rendered_mpijob(launcher_creation_policy=False))
    api_server.wait_for(lambda: pods_of(api_server, "quickstart-train", "launcher"), message="the launcher")
    workers = pods_of(api_server, "quickstart-train", "worker")
    assert len(workers) == 2 and all("conditions" not in (pod.get("status") or {}) for pod in workers)
    api_server.knobs.unready_workers.clear()


def test_without_the_upstream_folder_the_emulator_serves_mpijobs_without_their_schema(tmp_path, monkeypatch):
    import k8s.harness

    monkeypatch.setattr(k8s.harness, "UPSTREAM_DIR", tmp_path / "no-such-folder")
    with EmulatedCluster(tmp_path, simulate=False) as cluster:
        job = rendered_mpijob()
        job["spec"]["launcherPolicy"] = "anything"
        status, created = http(cluster, "POST", MPIJOBS + "?fieldValidation=Strict", job)
        assert status == 201 and created["spec"]["launcherPolicy"] == "anything"
        assert cluster.get("customresourcedefinitions", "mpijobs.kubeflow.org") is None
        crd = load_crd()
        assert crd is not None and cluster.get("customresourcedefinitions", crd["metadata"]["name"]) is not None


@requires_upstream
@pytest.mark.parametrize("example", SWEEP_EXAMPLES, ids=lambda path: path.stem)
def test_sweep_example_trials_mpijobs_are_accepted_by_the_upstream_schema(example):
    from lanex_operator.api.sweep import dataset_snapshot_name, trial_name, trial_parameters, trial_spec
    from lanex_operator.api.sweep_files import load_sweep_file
    from lanex_operator.controller.builders import mpijob_for

    metadata, spec = load_sweep_file(example)
    for index, parameters in enumerate(trial_parameters(spec)):
        name = trial_name(metadata["name"], index)
        trial = trial_spec(spec, parameters, dataset_snapshot_name(metadata["name"]))
        mpijob = mpijob_for({"name": name, "namespace": "default"}, trial, plan_for(name, "default", trial))
        assert upstream_problems(mpijob) == [], (name, parameters)
