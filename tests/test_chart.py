"""The Helm chart `charts/lanex-operator`, linted and rendered offline with helm-python-sdk.

Scenarios: a platform engineer installs with the defaults (all namespaces) or with everything on
(two namespaces, storage setup, ServiceMonitor, workload identity); every object is valid for
Kubernetes 1.30; the operator pod is hardened; RBAC is exactly what the operator uses; a wrong
value fails with a message naming the key; the chart ships the generated CRD byte for byte.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_rbac import (
    CHART_DIR,
    RELEASE_NAMESPACE,
    ROOT,
    chart_rbac_rules,
    grants_by_scope,
    granted_permissions,
    manifests,
    render_chart,
    rules_of,
)

KUBE_VERSION = "1.30"
CRD_NAME = "lanex.dev_laneexperiments.yaml"
FULLNAME = "lanex-lanex-operator"
SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CLIENT_ID = "12345678-90ab-cdef-1234-567890abcdef"


def pool_id(name: str) -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/lanex-rg/providers/Microsoft.NetApp"
            f"/netAppAccounts/lanex-anf/capacityPools/{name}")


FULL_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/lanex/operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "imagePullSecrets": ["regcred"],
    "watchNamespaces": ["runai-lane-detection", "ml-team"],
    "defaults": {
        "trainerImage": "registry.example.com/lanex/trainer:0.1.0",
        "storageClassName": "azurenetappfiles",
        "volumeSnapshotClassName": "netapp-csi-snapclass",
        "scheduler": "runai",
    },
    "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
                "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "lanex"}}},
    "storage": {"tierPools": {"Standard": pool_id("standard"), "Premium": pool_id("premium"),
                              "Ultra": pool_id("ultra")}},
    "azure": {"workloadIdentity": {"clientId": CLIENT_ID}},
    "storageSetup": {
        "enabled": True,
        "backend": {
            "credentialsSecret": "anf-credentials",
            "subscriptionID": SUBSCRIPTION,
            "tenantID": TENANT,
            "location": "westeurope",
            "virtualNetwork": "aks-vnet",
            "subnet": "anf-delegated",
            "capacityPools": ["premium"],
            "exportRule": "10.224.0.0/16,10.225.0.0/24",
        },
        "snapshotClass": {"deletionPolicy": "Retain"},
    },
    "podAnnotations": {"example.com/team": "perception"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
}

# Every permission the operator uses (issue 6), and nothing else; tests/test_rbac_matches_operator.py
# checks the same rules against the requests of the real operator.
NAMESPACED_GRANTS = {
    ("lanex.dev", "laneexperiments", "list"), ("lanex.dev", "laneexperiments", "watch"),
    ("lanex.dev", "laneexperiments", "patch"), ("lanex.dev", "laneexperiments/status", "patch"),
    ("lanex.dev", "laneexperiments/finalizers", "update"),
    ("", "pods", "list"), ("", "events", "create"), ("", "events", "list"),
    ("", "pods/log", "get"),  # progress reads (issue 13)
    # the opt-in label of a Secret or ServiceAccount an experiment names (credentials.optInLabel, default on)
    ("", "secrets", "get"), ("", "serviceaccounts", "get"),
    # LaneSweeps (issue 14): the sweeps themselves, their trials (LaneExperiments), early stopping
    ("lanex.dev", "lanesweeps", "list"), ("lanex.dev", "lanesweeps", "watch"), ("lanex.dev", "lanesweeps", "patch"),
    ("lanex.dev", "lanesweeps/status", "patch"), ("lanex.dev", "lanesweeps/finalizers", "update"),
    ("lanex.dev", "laneexperiments", "get"), ("lanex.dev", "laneexperiments", "create"),
    ("lanex.dev", "laneexperiments", "delete"), ("kubeflow.org", "mpijobs", "delete"),
    ("kueue.x-k8s.io", "localqueues", "get"),  # scheduler kueue: the LocalQueue must exist (preflight)
} | {("", "persistentvolumeclaims", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")} | {
    (group, resource, verb)
    for group, resource in (("batch", "jobs"), ("kubeflow.org", "mpijobs"))
    for verb in ("get", "list", "watch", "create")
} | {("snapshot.storage.k8s.io", "volumesnapshots", verb) for verb in ("get", "list", "watch", "create", "delete")}
CLUSTER_GRANTS = {
    ("", "persistentvolumes", "get"), ("", "persistentvolumes", "patch"),
    ("snapshot.storage.k8s.io", "volumesnapshotclasses", "get"), ("snapshot.storage.k8s.io", "volumesnapshotclasses", "list"),
    ("storage.k8s.io", "storageclasses", "get"),
    ("", "namespaces", "get"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
# Serving a list of namespaces, kopf also follows the namespaces (to serve a listed one created later).
NAMESPACE_OBSERVER_GRANTS = {("", "namespaces", "list"), ("", "namespaces", "watch")}

# Custom resources have no schema in kubernetes-validate: the fields their CRDs (Trident,
# external-snapshotter v6+, Prometheus operator) define, closed so that a typo fails here.
DURATION = "^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
METADATA = {"type": "object", "required": ["name", "labels"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}}}
CUSTOM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "driver",
                                                                      "deletionPolicy"],
        "properties": {"apiVersion": {}, "kind": {}, "metadata": METADATA, "driver": {"type": "string"},
                       "deletionPolicy": {"enum": ["Delete", "Retain"]},
                       "parameters": {"type": "object", "additionalProperties": {"type": "string"}}},
    },
    ("trident.netapp.io/v1", "TridentBackendConfig"): {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {}, "kind": {}, "metadata": {**METADATA, "required": ["name", "namespace", "labels"]},
            "spec": {
                "type": "object", "additionalProperties": False,
                "required": ["version", "storageDriverName", "subscriptionID", "location", "defaults"],
                "properties": {
                    "version": {"const": 1},
                    "storageDriverName": {"const": "azure-netapp-files"},
                    "credentials": {"type": "object", "additionalProperties": False, "required": ["name"],
                                    "properties": {"name": {"type": "string", "minLength": 1}}},
                    "subscriptionID": {"type": "string", "minLength": 1},
                    "tenantID": {"type": "string", "minLength": 1},
                    "location": {"type": "string", "minLength": 1},
                    "serviceLevel": {"enum": ["Standard", "Premium", "Ultra"]},
                    "virtualNetwork": {"type": "string"},
                    "subnet": {"type": "string"},
                    "capacityPools": {"type": "array", "items": {"type": "string"}},
                    "nfsMountOptions": {"type": "string"},
                    "limitVolumeSize": {"type": "string"},
                    "defaults": {"type": "object", "additionalProperties": False, "required": ["exportRule"],
                                 "properties": {"exportRule": {"type": "string", "minLength": 1}}},
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {}, "kind": {}, "metadata": METADATA,
            "spec": {
                "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"],
                                 "properties": {"matchLabels": {"type": "object",
                                                                "additionalProperties": {"type": "string"}}}},
                    "namespaceSelector": {"type": "object", "additionalProperties": False,
                                          "properties": {"matchNames": {"type": "array",
                                                                        "items": {"type": "string"}}}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["port"],
                        "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                       "interval": {"type": "string", "pattern": DURATION},
                                       "scrapeTimeout": {"type": "string", "pattern": DURATION}}}},
                },
            },
        },
    },
}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of value layers (later wins), as `helm -f a -f b` does."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


def objects_for(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return manifests(render_chart(values))


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def render_error(values: dict[str, Any]) -> str:
    """The message a wrong value fails the render with (install runs the same checks)."""
    with pytest.raises(helm.HelmError) as failure:
        render_chart(values)
    return str(failure.value)


# --- lint and render ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES, {"ui": {"enabled": True}}], ids=["defaults", "full", "ui"])
@pytest.mark.parametrize("kube_version", ["v1.25.0", "v1.30.0"])
def test_chart_lints_clean_in_strict_mode(values, kube_version):
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=kube_version, namespace=RELEASE_NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_install_serves_all_namespaces_with_one_cluster_role():
    objects = objects_for()
    assert sorted(obj["kind"] for obj in objects) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "operator", "--liveness-port=8080", "--metrics-port=9090", "--all-namespaces"]
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}]


def test_full_install_renders_every_optional_piece():
    objects = objects_for(FULL_VALUES)
    kinds = sorted((obj["kind"], obj["metadata"].get("namespace")) for obj in objects)
    assert kinds == sorted([
        ("ClusterRole", None), ("ClusterRoleBinding", None),
        ("Role", "runai-lane-detection"), ("RoleBinding", "runai-lane-detection"),
        ("Role", "ml-team"), ("RoleBinding", "ml-team"),
        ("Deployment", RELEASE_NAMESPACE), ("Service", RELEASE_NAMESPACE), ("ServiceAccount", RELEASE_NAMESPACE),
        ("ServiceMonitor", RELEASE_NAMESPACE), ("ConfigMap", RELEASE_NAMESPACE),
        ("TridentBackendConfig", "trident"), ("StorageClass", None), ("VolumeSnapshotClass", None),
    ])


def test_operator_reads_the_progress_budget_the_chart_passes():
    from lanex_operator.controller.config import OperatorConfig

    values = merged(FULL_VALUES, {"progress": {"intervalSeconds": 60, "requestsPerSecond": 2.5}})
    container = only(objects_for(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    config = OperatorConfig.from_env({item["name"]: item["value"] for item in container["env"] if "value" in item})
    assert (config.progress_interval_seconds, config.progress_requests_per_second) == (60.0, 2.5)
    assert (OperatorConfig().progress_interval_seconds, OperatorConfig().progress_requests_per_second) == (30.0, 10.0)


def test_grafana_dashboard_is_a_sidecar_configmap_with_the_panels_of_issue_13():
    assert not [obj for obj in objects_for() if obj["kind"] == "ConfigMap"]  # off by default
    configmap = only(objects_for(FULL_VALUES), "ConfigMap")
    assert configmap["metadata"]["name"] == f"{FULLNAME}-dashboard"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "lanex"}
    dashboard = json.loads(configmap["data"]["lanex.json"])
    assert dashboard == json.loads((CHART_DIR / "dashboards" / "lanex.json").read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in ("Experiments per phase", "Training progress", "Throughput", "Validation accuracy over epochs",
                   "Storage-tier moves", "GPU utilisation of worker pods (DCGM exporter)"):
        assert wanted in titles
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(titles)
    assert all(panel["targets"] and all(t["expr"] for t in panel["targets"]) for panel in dashboard["panels"])
    elsewhere = only(objects_for(merged(FULL_VALUES, {"metrics": {"grafanaDashboard": {"namespace": "monitoring"}}})),
                     "ConfigMap")
    assert elsewhere["metadata"]["namespace"] == "monitoring"


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "full"])
def test_every_builtin_object_is_valid_for_kubernetes_1_30(values):
    validated = []
    for obj in objects_for(values):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_SCHEMAS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        validated.append(obj["kind"])
    assert "Deployment" in validated and "ClusterRole" in validated


def test_custom_resources_match_their_crds_fields():
    custom = [obj for obj in objects_for(FULL_VALUES) if (obj["apiVersion"], obj["kind"]) in CUSTOM_SCHEMAS]
    assert sorted(obj["kind"] for obj in custom) == ["ServiceMonitor", "TridentBackendConfig", "VolumeSnapshotClass"]
    for obj in custom:
        jsonschema.validate(obj, CUSTOM_SCHEMAS[(obj["apiVersion"], obj["kind"])])


def test_the_chart_crd_is_a_valid_apiextensions_object():
    with helm.Chart.load(CHART_DIR) as chart:
        crds = chart.crds
    assert sorted(crd["filename"] for crd in crds) == [f"lanex-operator/crds/{CRD_NAME}",
                                                       "lanex-operator/crds/lanex.dev_lanesweeps.yaml"]
    for crd in crds:
        kubernetes_validate.validate(yaml.safe_load(crd["data"]), KUBE_VERSION, strict=True)


# --- the operator pod ----------------------------------------------------------------------------


def test_operator_pod_is_hardened_single_replica_and_probed_on_kopf_liveness():
    deployment = only(objects_for(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "privileged": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "healthz"},
                                          "initialDelaySeconds": 10, "periodSeconds": 20, "timeoutSeconds": 5,
                                          "failureThreshold": 3}
    assert container["ports"] == [{"name": "healthz", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "500m", "memory": "384Mi"}}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert container["image"] == "ghcr.io/lanex/operator:0.1.0"
    assert pod["serviceAccountName"] == FULLNAME


def test_operator_defaults_and_ports_come_from_values():
    values = merged(FULL_VALUES, {"livenessPort": 18080, "metrics": {"port": 19090},
                                  "resources": {"limits": {"memory": "1Gi"}}})
    objects = objects_for(values)
    container = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "--liveness-port=18080", "--metrics-port=19090",
                                 "--namespace=runai-lane-detection", "--namespace=ml-team"]
    assert container["image"] == "registry.example.com/lanex/operator:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    assert [port["containerPort"] for port in container["ports"]] == [18080, 19090]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env == {
        "LANEX_TRAINER_IMAGE": "registry.example.com/lanex/trainer:0.1.0",
        "LANEX_DEFAULT_STORAGE_CLASS": "azurenetappfiles",
        "LANEX_DEFAULT_SNAPSHOT_CLASS": "netapp-csi-snapclass",
        "LANEX_DEFAULT_SCHEDULER": "runai",
        "LANEX_OPERATOR_DATASET_BOUND_TIMEOUT_SECONDS": "1800",
        "LANEX_OPERATOR_MPIJOB_CONDITION_TIMEOUT_SECONDS": "600",
        "LANEX_OPERATOR_POD_STUCK_TIMEOUT_SECONDS": "1800",
        "LANEX_OPERATOR_CRASH_LOOP_RESTARTS": "5",
        "LANEX_OPERATOR_TRAINING_START_TIMEOUT_SECONDS": "1800",
        "LANEX_OPERATOR_PREFLIGHT_TIMEOUT_SECONDS": "3600",
        "LANEX_OPERATOR_PROGRESS_INTERVAL_SECONDS": "30",
        "LANEX_OPERATOR_PROGRESS_REQUESTS_PER_SECOND": "10",
        "LANEX_OPERATOR_CREDENTIALS_BY_LABEL": "true",
        "LANEX_OPERATOR_USABLE_SECRETS": "",
        "LANEX_OPERATOR_USABLE_SERVICE_ACCOUNTS": "",
        "LANEX_OPERATOR_DELETE_LAUNCHER_PODS": "false",
        "LANEX_ANF_POOL_PREMIUM": pool_id("premium"),
        "LANEX_ANF_POOL_STANDARD": pool_id("standard"),
        "LANEX_ANF_POOL_ULTRA": pool_id("ultra"),
    }
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 19090, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = only(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "10s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The ServiceMonitor selects the metrics Service, and the Service selects the operator pod.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "full"])
def test_operator_reads_the_defaults_the_chart_passes(values):
    from lanex_operator.plan.defaults import ClusterDefaults

    container = only(objects_for(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    environ = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    chosen = (values or {}).get("defaults") or yaml.safe_load((CHART_DIR / "values.yaml").read_text())["defaults"]
    assert ClusterDefaults.from_env(environ) == ClusterDefaults(
        trainer_image=chosen["trainerImage"], storage_class_name=chosen["storageClassName"],
        volume_snapshot_class_name=chosen["volumeSnapshotClassName"], scheduler=chosen["scheduler"])
    # The chart's own defaults are the operator's built-in fallbacks: an install changes nothing by itself.
    if values is None:
        assert ClusterDefaults.from_env(environ) == ClusterDefaults()


def test_operator_reads_the_wait_bounds_the_chart_passes():
    from lanex_operator.controller.config import OperatorConfig

    def config(values):
        container = only(objects_for(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        return OperatorConfig.from_env({item["name"]: item["value"] for item in container["env"] if "value" in item})

    # The chart's defaults are the operator's built-in ones; each value reaches its setting.
    bounds = ("dataset_bound_timeout_seconds", "mpijob_condition_timeout_seconds", "pod_stuck_timeout_seconds",
              "crash_loop_restarts", "training_start_timeout_seconds", "preflight_timeout_seconds")
    default = config(None)
    assert [getattr(default, bound) for bound in bounds] == [1800.0, 600.0, 1800.0, 5.0, 1800.0, 3600.0] == [
        getattr(OperatorConfig(), bound) for bound in bounds]
    chosen = config({"timeouts": {"datasetBoundSeconds": 900, "mpijobConditionSeconds": 120, "podStuckSeconds": 3600,
                                  "crashLoopRestarts": 3, "trainingStartSeconds": 600, "preflightSeconds": 7200}})
    assert [getattr(chosen, bound) for bound in bounds] == [900.0, 120.0, 3600.0, 3.0, 600.0, 7200.0]


def test_operator_reads_the_tier_pools_the_chart_passes():
    from lanex_operator.azure.volume import TierSettings

    container = only(objects_for(FULL_VALUES), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    environ = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    settings = TierSettings.from_env(environ)
    assert dict(settings.pools) == {"Standard": pool_id("standard"), "Premium": pool_id("premium"),
                                    "Ultra": pool_id("ultra")}


def test_workload_identity_annotates_the_service_account_and_labels_the_pod():
    objects = objects_for(FULL_VALUES)
    account = only(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"azure.workload.identity/client-id": CLIENT_ID}
    pod = only(objects, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    names = [item["name"] for item in pod["spec"]["containers"][0]["env"]]
    assert "AZURE_CLIENT_SECRET" not in names
    assert "annotations" not in only(objects_for(), "ServiceAccount")["metadata"]


def test_azure_service_principal_comes_from_an_existing_secret_by_reference_only():
    values = {"azure": {"credentialsSecret": "lanex-azure"}}
    container = only(objects_for(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    azure_env = [item for item in container["env"] if item["name"].startswith("AZURE_")]
    assert azure_env == [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": "lanex-azure", "key": name}}}
        for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")
    ]


# --- storage setup (TR-4896's trident-config) --------------------------------------------------


def test_storage_setup_creates_the_anf_backend_class_and_snapshot_class():
    objects = objects_for(FULL_VALUES)
    backend = only(objects, "TridentBackendConfig")
    assert backend["metadata"]["namespace"] == "trident"
    assert backend["spec"] == {
        "version": 1, "storageDriverName": "azure-netapp-files", "credentials": {"name": "anf-credentials"},
        "subscriptionID": SUBSCRIPTION, "tenantID": TENANT, "location": "westeurope", "serviceLevel": "Premium",
        "virtualNetwork": "aks-vnet", "subnet": "anf-delegated", "capacityPools": ["premium"],
        "nfsMountOptions": "nfsvers=3", "limitVolumeSize": "500Gi",
        "defaults": {"exportRule": "10.224.0.0/16,10.225.0.0/24"},
    }
    storage_class = only(objects, "StorageClass")
    assert {key: storage_class[key] for key in ("provisioner", "parameters", "reclaimPolicy", "allowVolumeExpansion",
                                                "volumeBindingMode")} == {
        "provisioner": "csi.trident.netapp.io", "parameters": {"backendType": "azure-netapp-files", "fsType": "nfs"},
        "reclaimPolicy": "Delete", "allowVolumeExpansion": True, "volumeBindingMode": "Immediate"}
    assert storage_class["metadata"]["name"] == "azurenetappfiles"
    snapshot_class = only(objects, "VolumeSnapshotClass")
    assert (snapshot_class["metadata"]["name"], snapshot_class["driver"], snapshot_class["deletionPolicy"]) == (
        "netapp-csi-snapclass", "csi.trident.netapp.io", "Retain")
    for obj in (backend, storage_class, snapshot_class):
        assert obj["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_snapshot_class_deletes_by_default_and_storage_setup_is_off_by_default():
    assert not {"TridentBackendConfig", "StorageClass", "VolumeSnapshotClass"} & {o["kind"] for o in objects_for()}
    values = merged(FULL_VALUES, {"storageSetup": {"snapshotClass": {"deletionPolicy": "Delete"}}})
    assert only(objects_for(values), "VolumeSnapshotClass")["deletionPolicy"] == "Delete"
    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.values["storageSetup"]["snapshotClass"]["deletionPolicy"] == "Delete"
        assert chart.values["storageSetup"]["backend"]["exportRule"] == ""


def test_snapshot_class_can_be_marked_the_default_of_its_driver_and_is_not_by_default():
    from lanex_operator.controller.preflight import DEFAULT_SNAPSHOT_CLASS_ANNOTATION

    assert DEFAULT_SNAPSHOT_CLASS_ANNOTATION not in only(objects_for(FULL_VALUES), "VolumeSnapshotClass")[
        "metadata"]["annotations"]
    marked = only(objects_for(merged(FULL_VALUES, {"storageSetup": {"snapshotClass": {"isDefault": True}}})),
                  "VolumeSnapshotClass")
    assert marked["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep",
                                                 DEFAULT_SNAPSHOT_CLASS_ANNOTATION: "true"}
    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.values["storageSetup"]["snapshotClass"]["isDefault"] is False


def test_managed_identity_backend_carries_no_credentials_or_tenant():
    values = merged(FULL_VALUES, {"storageSetup": {"backend": {"credentialsSecret": "", "useManagedIdentity": True}}})
    spec = only(objects_for(values), "TridentBackendConfig")["spec"]
    assert "credentials" not in spec and "tenantID" not in spec
    assert spec["subscriptionID"] == SUBSCRIPTION


# --- wrong values fail with a message naming the key -----------------------------------------


SCHEMA_REJECTIONS = [
    ("bad scheduler", {"defaults": {"scheduler": "slurm"}}, ["/defaults/scheduler", "'runai', 'kubeflow'"]),
    ("replicas are not configurable", {"replicaCount": 2}, ["'replicaCount' not allowed"]),
    ("open export rule", merged(FULL_VALUES, {"storageSetup": {"backend": {"exportRule": "0.0.0.0/0"}}}),
     ["/storageSetup/backend/exportRule", "'0.0.0.0/0' does not match"]),
    ("open export rule among others",
     merged(FULL_VALUES, {"storageSetup": {"backend": {"exportRule": "10.224.0.0/16,0.0.0.0/0"}}}),
     ["/storageSetup/backend/exportRule", "'10.224.0.0/16,0.0.0.0/0' does not match"]),
    ("export rule too broad", merged(FULL_VALUES, {"storageSetup": {"backend": {"exportRule": "10.0.0.0/4"}}}),
     ["/storageSetup/backend/exportRule", "'10.0.0.0/4'"]),
    ("inline backend secret", merged(FULL_VALUES, {"storageSetup": {"backend": {"clientSecret": "s3cr3t-value"}}}),
     ["/storageSetup/backend", "'clientSecret' not allowed"]),
    ("inline azure secret", {"azure": {"clientSecret": "s3cr3t-value"}}, ["/azure", "'clientSecret' not allowed"]),
    ("bad image tag", {"image": {"tag": "v1 beta"}}, ["/image/tag", "'v1 beta'"]),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"]),
    ("untagged trainer image", {"defaults": {"trainerImage": "ghcr.io/lanex/trainer"}},
     ["/defaults/trainerImage", "'ghcr.io/lanex/trainer'"]),
    ("bad storage class", {"defaults": {"storageClassName": "Azure_NetApp"}},
     ["/defaults/storageClassName", "'Azure_NetApp'"]),
    ("bad namespace", {"watchNamespaces": ["ml-team", "Team_A"]}, ["/watchNamespaces/1", "'Team_A'"]),
    ("bad memory", {"resources": {"limits": {"memory": "lots"}}}, ["/resources/limits/memory", "'lots'"]),
    ("negative cpu", {"resources": {"requests": {"cpu": "-1"}}}, ["/resources/requests/cpu", "'-1'"]),
    ("missing limits", {"resources": {"limits": None}}, ["/resources"]),
    ("privileged port", {"metrics": {"port": 80}}, ["/metrics/port", "minimum"]),
    ("root uid", {"securityContext": {"runAsUser": 0}}, ["/securityContext/runAsUser", "minimum"]),
    ("bad pool id", {"storage": {"tierPools": {"Ultra": "pool-ultra"}}}, ["/storage/tierPools/Ultra", "'pool-ultra'"]),
    ("bad client id", {"azure": {"workloadIdentity": {"clientId": "my-identity"}}},
     ["/azure/workloadIdentity/clientId", "'my-identity'"]),
    ("bad service level", merged(FULL_VALUES, {"storageSetup": {"backend": {"serviceLevel": "Gold"}}}),
     ["/storageSetup/backend/serviceLevel", "'Standard', 'Premium', 'Ultra'"]),
    ("bad deletion policy", {"storageSetup": {"snapshotClass": {"deletionPolicy": "Keep"}}},
     ["/storageSetup/snapshotClass/deletionPolicy"]),
    ("zero wait bound", {"timeouts": {"podStuckSeconds": 0}}, ["/timeouts/podStuckSeconds", "minimum"]),
    ("string default mark", {"storageSetup": {"snapshotClass": {"isDefault": "yes"}}},
     ["/storageSetup/snapshotClass/isDefault", "want boolean"]),
]


@pytest.mark.parametrize("values,expected", [case[1:] for case in SCHEMA_REJECTIONS],
                         ids=[case[0] for case in SCHEMA_REJECTIONS])
def test_wrong_value_is_rejected_by_the_schema_naming_it(values, expected):
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError) as failure:
        chart.validate_schema(values)
    message = str(failure.value)
    for part in expected:
        assert part in message, message
    assert "s3cr3t-value" not in message  # a secret someone pasted is not echoed back
    assert any(part in render_error(values) for part in expected)


TEMPLATE_REJECTIONS = [
    ("same port twice", {"metrics": {"port": 8080}}, "livenessPort and metrics.port must differ"),
    ("two azure identities", {"azure": {"workloadIdentity": {"clientId": CLIENT_ID}, "credentialsSecret": "sp"}},
     "azure.workloadIdentity.clientId and azure.credentialsSecret are exclusive"),
    ("export rule missing", merged(FULL_VALUES, {"storageSetup": {"backend": {"exportRule": ""}}}),
     "storageSetup.enabled needs storageSetup.backend.exportRule (exportRule: the CIDR of the cluster's node subnet"),
    ("storage setup without azure ids", {"storageSetup": {"enabled": True, "backend": {"exportRule": "10.0.0.0/8"}}},
     "storageSetup.enabled needs storageSetup.backend.subscriptionID, storageSetup.backend.location, "
     "storageSetup.backend.virtualNetwork, storageSetup.backend.subnet ("),
    ("backend without credentials", merged(FULL_VALUES, {"storageSetup": {"backend": {"credentialsSecret": ""}}}),
     "storageSetup.backend: set credentialsSecret"),
    ("backend with both credentials", merged(FULL_VALUES, {"storageSetup": {"backend": {"useManagedIdentity": True}}}),
     "credentialsSecret and storageSetup.backend.useManagedIdentity are exclusive"),
    ("service principal without tenant", merged(FULL_VALUES, {"storageSetup": {"backend": {"tenantID": ""}}}),
     "storageSetup.backend.tenantID is required"),
]


@pytest.mark.parametrize("values,expected", [case[1:] for case in TEMPLATE_REJECTIONS],
                         ids=[case[0] for case in TEMPLATE_REJECTIONS])
def test_inconsistent_values_fail_the_render_naming_the_keys(values, expected):
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)  # each value is fine alone
    assert expected in render_error(values)


def test_lint_reports_a_wrong_value_as_an_error():
    report = helm.lint(CHART_DIR, {"defaults": {"scheduler": "slurm"}}, strict=True, kube_version="v1.30.0")
    assert any("/defaults/scheduler" in error for error in report["errors"]), report


def test_values_schema_is_draft_07_and_accepts_the_chart_defaults():
    schema = yaml.safe_load((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    jsonschema.Draft7Validator(schema).validate(merged(defaults, FULL_VALUES))
    assert "0.0.0.0/0" not in (CHART_DIR / "values.yaml").read_text().split("Never 0.0.0.0/0")[0]


# --- RBAC ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values,extra", [(None, set()), (FULL_VALUES, NAMESPACE_OBSERVER_GRANTS)],
                         ids=["all-namespaces", "two-namespaces"])
def test_rbac_grants_exactly_what_the_operator_uses(values, extra):
    granted = granted_permissions(values)
    expected = NAMESPACED_GRANTS | CLUSTER_GRANTS | extra
    assert granted == expected, f"extra: {sorted(granted - expected)}; missing: {sorted(expected - granted)}"


def test_rbac_has_no_wildcards_no_secret_listing_and_no_peering():
    for values in (None, FULL_VALUES):
        for role in (obj for obj in objects_for(values) if obj["kind"] in ("Role", "ClusterRole")):
            for rule in role["rules"]:
                assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}: {rule}"
    granted = granted_permissions(None)
    resources = {resource for _, resource, _ in granted}
    assert not resources & {"configmaps", "clusterkopfpeerings", "kopfpeerings", "leases"}
    # Secrets: one get by name, for the owner's opt-in label (metadata only); never list or watch them.
    assert {p for p in granted if p[1] in ("secrets", "serviceaccounts")} == {
        ("", "secrets", "get"), ("", "serviceaccounts", "get")}


def test_without_opt_in_labels_the_operator_gets_no_rights_on_secrets_and_reads_only_the_listed_ones():
    from lanex_operator.controller.grants import Grants

    values = {"credentials": {"optInLabel": False, "secrets": ["runai-lane-detection/tusimple-mirror"],
                              "serviceAccounts": ["runai-lane-detection/tusimple-reader", "ml-team/reader"]}}
    granted = granted_permissions(values)
    assert granted == NAMESPACED_GRANTS - {("", "secrets", "get"), ("", "serviceaccounts", "get")} | CLUSTER_GRANTS
    assert grants_from(values) == Grants(credentials_by_label=False,
                                         usable_secrets=frozenset({"runai-lane-detection/tusimple-mirror"}),
                                         usable_service_accounts=frozenset({"runai-lane-detection/tusimple-reader",
                                                                            "ml-team/reader"}))
    assert grants_from(None) == Grants()  # the chart's defaults are the operator's built-in ones


def test_delete_pods_is_granted_only_for_stall_restarts_and_the_operator_knows_whether_it_is():
    assert ("", "pods", "delete") not in granted_permissions(None)  # docs/security.md: only with stallAction Restart
    allowed = {"stallRestart": {"deleteLauncherPods": True}}
    assert granted_permissions(allowed) - granted_permissions(None) == {("", "pods", "delete")}
    assert grants_from(None).delete_launcher_pods is False and grants_from(allowed).delete_launcher_pods is True


def grants_from(values):
    from lanex_operator.controller.grants import Grants

    container = only(objects_for(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return Grants.from_env({item["name"]: item["value"] for item in container["env"] if "value" in item})


@pytest.mark.parametrize("values,expected", [
    ({"credentials": {"secrets": ["tusimple-mirror"]}}, "credentials.secrets"),
    ({"credentials": {"optInLabel": "yes"}}, "credentials.optInLabel"),
    ({"stallRestart": {"deleteLauncherPods": 1}}, "stallRestart.deleteLauncherPods"),
])
def test_credentials_and_stall_restart_values_are_checked_by_the_schema(values, expected):
    with pytest.raises(Exception) as caught:
        render_chart(values)
    assert expected.split(".")[-1] in str(caught.value)


def test_namespaced_mode_keeps_namespaced_grants_inside_the_served_namespaces():
    scopes = grants_by_scope(FULL_VALUES)
    assert scopes == {None: CLUSTER_GRANTS | NAMESPACE_OBSERVER_GRANTS, "runai-lane-detection": NAMESPACED_GRANTS,
                      "ml-team": NAMESPACED_GRANTS}
    objects = objects_for(FULL_VALUES)
    for binding in (obj for obj in objects if obj["kind"] == "RoleBinding"):
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}]
    cluster_binding = only(objects, "ClusterRoleBinding")
    cluster_role = only(objects, "ClusterRole")["metadata"]["name"]
    assert cluster_binding["roleRef"]["name"] == cluster_role == f"{FULLNAME}-cluster"


def test_chart_rbac_rules_reads_every_role_of_a_rendering():
    rules = chart_rbac_rules(objects_for(FULL_VALUES))
    assert rules == sorted(rules) and len(rules) == len(set(rules))
    assert chart_rbac_rules(render_chart(FULL_VALUES)) == rules
    assert set(rules) == granted_permissions(FULL_VALUES)


# --- the CRD ---------------------------------------------------------------------------------------


def test_chart_ships_the_generated_crd_byte_for_byte():
    chart_copy = CHART_DIR / "crds" / CRD_NAME
    assert chart_copy.read_bytes() == (ROOT / "crds" / CRD_NAME).read_bytes(), (
        f"{chart_copy} is stale: run `python scripts/sync_chart_crd.py`")
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_chart_crd.py"), "--check"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_sync_script_detects_and_repairs_a_stale_chart_crd(tmp_path: Path):
    (tmp_path / "crds").mkdir()
    shutil.copy(ROOT / "crds" / CRD_NAME, tmp_path / "crds" / CRD_NAME)
    stale = tmp_path / "charts" / "lanex-operator" / "crds" / CRD_NAME
    stale.parent.mkdir(parents=True)
    stale.write_text("# an older CRD\n")
    script = [sys.executable, str(ROOT / "scripts" / "sync_chart_crd.py"), "--root", str(tmp_path)]

    check = subprocess.run([*script, "--check"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1 and "differs" in check.stderr
    assert stale.read_text() == "# an older CRD\n"

    subprocess.run(script, check=True, capture_output=True, timeout=30)
    assert stale.read_bytes() == (ROOT / "crds" / CRD_NAME).read_bytes()
    assert subprocess.run([*script, "--check"], capture_output=True, timeout=30).returncode == 0


def test_chart_metadata_pins_the_versions():
    with helm.Chart.load(CHART_DIR) as chart:
        metadata = chart.metadata
    assert (metadata["apiVersion"], metadata["name"], metadata["version"], metadata["appVersion"],
            metadata["kubeVersion"]) == ("v2", "lanex-operator", "0.1.0", "0.1.0", ">=1.25.0-0")


def test_install_guide_values_render_and_name_the_deployment_it_waits_for():
    guide = (ROOT / "docs" / "operations" / "install.md").read_text()
    values = yaml.safe_load(guide.split("```yaml\n", 1)[1].split("```", 1)[0])
    objects = manifests(render_chart(values, release="lanex-operator", namespace="lanex-system"))
    assert only(objects, "Deployment")["metadata"]["name"] == "lanex-operator"
    assert "kubectl -n lanex-system rollout status deployment/lanex-operator" in guide
    backend = only(objects, "TridentBackendConfig")
    assert backend["metadata"]["name"] in guide and backend["spec"]["defaults"]["exportRule"] == "10.224.0.0/16"
    assert {"azurenetappfiles", "netapp-csi-snapclass"} == {
        obj["metadata"]["name"] for obj in objects if obj["kind"] in ("StorageClass", "VolumeSnapshotClass")}


def test_packaged_chart_renders_like_the_directory(tmp_path: Path):
    with helm.Chart.load(CHART_DIR) as chart:
        archive = Path(chart.save(tmp_path))
    assert archive.name == "lanex-operator-0.1.0.tgz"
    with helm.Chart.load(archive) as packaged:
        assert sorted(crd["data"] for crd in packaged.crds) == sorted(
            (ROOT / "crds" / name).read_text() for name in (CRD_NAME, "lanex.dev_lanesweeps.yaml"))
        rendered = packaged.render(FULL_VALUES, name="lanex", namespace=RELEASE_NAMESPACE)
    assert manifests(rendered) == objects_for(FULL_VALUES)


# --- the optional `lanex ui` ------------------------------------------------------------------------


def test_the_ui_is_off_by_default_and_when_on_only_reads_lanex_objects_and_events():
    assert not [obj for obj in objects_for() if obj["metadata"]["name"].endswith("-ui")]
    objects = [obj for obj in objects_for({"ui": {"enabled": True}}) if obj["metadata"]["name"] == f"{FULLNAME}-ui"]
    assert sorted(obj["kind"] for obj in objects) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]  # no Ingress
    role = only(objects, "ClusterRole")
    assert set(rules_of(role)) == {(group, resource, verb) for group, resource in (
        ("lanex.dev", "laneexperiments"), ("lanex.dev", "lanesweeps"), ("", "events"))
        for verb in ("get", "list", "watch")}
    binding = only(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULLNAME}-ui", "namespace": RELEASE_NAMESPACE}]
    pod = only(objects, "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["ui", "--all-namespaces", "--host", "0.0.0.0", "--port", "8765"]
    assert pod["spec"]["serviceAccountName"] == f"{FULLNAME}-ui"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = only(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # the operator's Service and Deployment never select the dashboard's pod
    operator = only([o for o in objects_for({"ui": {"enabled": True}}) if o["kind"] == "Deployment"
                     and o["metadata"]["name"] == FULLNAME], "Deployment")
    assert not operator["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_the_ui_port_is_checked_by_the_schema():
    assert "port" in render_error({"ui": {"enabled": True, "port": 80}})
