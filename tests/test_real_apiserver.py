"""The CRDs and the specs against the real kube-apiserver (tools/cluster: upstream v1.37, built from source).

What only a real apiserver shows: whether it accepts the CRDs at all (CEL rules are priced against
their worst case when a CRD is created), server-side validation with strict field checking, CEL
rules evaluated, and printer columns rendered from the server's Table.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from test_api_models import INVALID_SPECS, MINIMAL, as_object, with_changes

ROOT = pathlib.Path(__file__).resolve().parents[1]
LANEX_CRDS = {
    "laneexperiments.lanex.dev": ROOT / "crds" / "lanex.dev_laneexperiments.yaml",
    "lanesweeps.lanex.dev": ROOT / "crds" / "lanex.dev_lanesweeps.yaml",
}


@pytest.fixture(scope="module")
def cluster(real_cluster: Any) -> Any:
    real_cluster.apply_files(list(LANEX_CRDS.values()))
    real_cluster.wait_established(list(LANEX_CRDS))
    return real_cluster


def dry_run(cluster: Any, obj: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                           input=yaml.safe_dump(obj), check=False)


def test_both_crds_are_accepted_and_established(cluster):
    for name in LANEX_CRDS:
        crd = cluster.get(f"crd/{name}")
        conditions = {c["type"]: c for c in crd["status"]["conditions"]}
        assert conditions["Established"]["status"] == "True", conditions
        assert conditions["NamesAccepted"]["status"] == "True", conditions
        assert conditions.get("NonStructuralSchema", {}).get("status") != "True", conditions


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_passes_the_apiservers_validation(cluster, example):
    for doc in yaml.safe_load_all(example.read_text()):
        cluster.ensure_namespace(doc["metadata"].get("namespace", "default"))
    result = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("spec", "crd_path"), [(case[1], case[3]) for case in INVALID_SPECS], ids=[case[0] for case in INVALID_SPECS]
)
def test_a_spec_lanex_refuses_is_refused_by_the_apiserver_naming_the_field(cluster, spec, crd_path):
    result = dry_run(cluster, as_object(spec, name="refused"))
    assert result.returncode != 0, f"the apiserver accepted {json.dumps(spec)}"
    field = crd_path.split(":")[0].split("[")[0]
    assert field in result.stderr, result.stderr


URL_CASES = [
    ("query string", "https://data.example.com/train_set.zip?sig=secret", "must not hold a query string"),
    ("user and password", "https://user:pw@data.example.com/train_set.zip", "must not hold user:password"),
]


@pytest.mark.parametrize(("url", "message"), [c[1:] for c in URL_CASES], ids=[c[0] for c in URL_CASES])
def test_the_crd_cel_rules_refuse_credentials_in_a_download_url(cluster, url, message):
    result = dry_run(cluster, as_object({"dataset": {"download": {"urls": [{"url": url}]}}}, name="leaky"))
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize(("uri", "message"), [c[1:] for c in [
    ("token in query", "https://mlflow.example.com/?token=secret", "trackingUri must not hold a query string"),
    ("user and password", "https://alice:pw@mlflow.example.com", "trackingUri must not hold user:password"),
]], ids=["token in query", "user and password"])
def test_the_crd_cel_rules_refuse_credentials_in_the_mlflow_tracking_uri(cluster, uri, message):
    spec = {**MINIMAL, "tracking": {"mlflow": {"trackingUri": uri, "experimentName": "lanes"}}}
    result = dry_run(cluster, as_object(spec, name="leaky-mlflow"))
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_a_url_longer_than_the_bound_is_refused_naming_the_field(cluster):
    from lanex_operator.api.models import MAX_URL_LENGTH

    url = "https://data.example.com/" + "a" * MAX_URL_LENGTH
    result = dry_run(cluster, as_object({"dataset": {"download": {"urls": [{"url": url}]}}}, name="long-url"))
    assert result.returncode != 0 and "spec.dataset.download.urls[0].url" in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["9lives", "a" * 43, "Quick"])
def test_an_experiment_name_no_child_could_carry_is_refused(cluster, name):
    result = dry_run(cluster, as_object(MINIMAL, name=name))
    assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr


def sweep_named(name: str) -> dict[str, Any]:
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": MINIMAL, "parameters": [{"path": "learningRate", "values": [0.01, 0.02]}]}}


@pytest.mark.parametrize("name", ["3lr-sweep", "s" * 35, "Lr"])
def test_a_sweep_name_its_trials_or_dataset_could_not_carry_is_refused(cluster, name):
    result = dry_run(cluster, sweep_named(name))
    assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr


def test_the_longest_sweep_name_is_accepted(cluster):
    from lanex_operator.api.sweep import MAX_SWEEP_NAME_LENGTH

    result = dry_run(cluster, sweep_named("s" * MAX_SWEEP_NAME_LENGTH))
    assert result.returncode == 0, result.stderr


def test_kubectl_get_lx_prints_the_printer_columns_from_the_servers_table(cluster):
    cluster.ensure_namespace("columns")
    cluster.kubectl("apply", "-n", "columns", "-f", "-", input=yaml.safe_dump(as_object(
        with_changes("training.workers", 3), name="columns")))
    crd = cluster.get("crd/laneexperiments.lanex.dev")
    expected = [c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
                if c.get("priority", 0) == 0]
    header = cluster.kubectl("get", "lx", "-n", "columns").stdout.splitlines()[0].split()
    assert header == ["NAME", *[word for column in expected for word in column.split()]], header
