"""The API server emulator behaves like the apiserver where kopf and the operator depend on it.

(Whether the operator's real traffic is exactly what the chart's RBAC grants is
tests/test_rbac_matches_operator.py.)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from k8s.emulator import FaultPlan
from k8s.scenarios import experiment

pytestmark = pytest.mark.timeout(60)

PVCS = "/api/v1/namespaces/default/persistentvolumeclaims"
EXPERIMENTS = "/apis/lanex.dev/v1alpha1/namespaces/default/laneexperiments"


def http(api_server, method: str, path: str, body: Any = None, content_type: str = "application/json",
         agent: str = "tests/1") -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api_server.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "User-Agent": agent})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def claim(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "none",
                     "resources": {"requests": {"storage": "1Gi"}}}}


def test_objects_get_uid_resource_version_timestamps_and_the_url_namespace(api_server):
    status, created = http(api_server, "POST", PVCS, claim("c1"))
    assert status == 201
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1
    assert len(meta["uid"]) == 36 and meta["resourceVersion"].isdigit() and meta["creationTimestamp"].endswith("Z")
    status, generated = http(api_server, "POST", PVCS, {**claim(""), "metadata": {"generateName": "data-"}})
    assert status == 201 and generated["metadata"]["name"].startswith("data-") and len(generated["metadata"]["name"]) == 10
    assert http(api_server, "POST", PVCS, claim("c1"))[0] == 409
    assert http(api_server, "POST", "/api/v1/namespaces/nowhere/persistentvolumeclaims", claim("c2"))[0] == 404


def test_generation_moves_on_spec_changes_and_status_only_through_the_subresource(api_server):
    api_server.create(experiment("gen"))
    _, base = http(api_server, "GET", f"{EXPERIMENTS}/gen")
    _, labelled = http(api_server, "PATCH", f"{EXPERIMENTS}/gen", {"metadata": {"labels": {"a": "b"}},
                                                                   "status": {"phase": "Hacked"}},
                       "application/merge-patch+json")
    assert labelled["metadata"]["generation"] == 1 and "status" not in labelled
    assert int(labelled["metadata"]["resourceVersion"]) > int(base["metadata"]["resourceVersion"])
    _, same = http(api_server, "PATCH", f"{EXPERIMENTS}/gen", {"metadata": {"labels": {"a": "b"}}},
                   "application/merge-patch+json")
    assert same["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]  # no-op: no new version
    _, status_patched = http(api_server, "PATCH", f"{EXPERIMENTS}/gen/status",
                             {"status": {"phase": "Pending"}, "spec": {"training": {"workers": 9}}},
                             "application/merge-patch+json")
    assert status_patched["status"] == {"phase": "Pending"}
    assert status_patched["spec"]["training"]["workers"] == 2 and status_patched["metadata"]["generation"] == 1
    _, spec_patched = http(api_server, "PATCH", f"{EXPERIMENTS}/gen", {"spec": {"training": {"workers": 3}}},
                           "application/merge-patch+json")
    assert spec_patched["metadata"]["generation"] == 2 and spec_patched["status"] == {"phase": "Pending"}
    stale = {"metadata": {"resourceVersion": base["metadata"]["resourceVersion"]}, "spec": {"x": 1}}
    assert http(api_server, "PATCH", f"{EXPERIMENTS}/gen", stale, "application/merge-patch+json")[0] == 409
    test_op = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
               {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    assert http(api_server, "PATCH", f"{EXPERIMENTS}/gen", test_op, "application/json-patch+json")[0] == 422
    replaced = dict(spec_patched, spec={"dataset": {"synthetic": {}}})
    status, put = http(api_server, "PUT", f"{EXPERIMENTS}/gen", replaced)
    assert status == 200 and put["metadata"]["generation"] == 3
    assert put["spec"]["dataset"]["synthetic"] == {"clips": 300, "seed": 0}  # the CRD's defaults, as the apiserver


def test_lists_carry_kinds_and_honour_label_selectors_and_core_discovery_is_v1(api_server):
    for name, labels in (("s1", {"tier": "gold", "app": "x"}), ("s2", {"tier": "silver"}), ("s3", {})):
        http(api_server, "POST", PVCS, claim(name, labels))

    def names(selector: str) -> list[str]:
        _, listing = http(api_server, "GET", f"{PVCS}?labelSelector={urllib.request.quote(selector)}")
        assert listing["kind"] == "PersistentVolumeClaimList" and listing["metadata"]["resourceVersion"].isdigit()
        assert all(item["kind"] == "PersistentVolumeClaim" and item["apiVersion"] == "v1" for item in listing["items"])
        return [item["metadata"]["name"] for item in listing["items"]]

    assert names("tier=gold") == ["s1"]
    assert names("tier!=gold") == ["s2", "s3"]
    assert names("tier in (gold,silver)") == ["s1", "s2"]
    assert names("tier notin (gold)") == ["s2", "s3"]
    assert names("app") == ["s1"] and names("!tier") == ["s3"]
    assert http(api_server, "GET", "/api/v1")[1]["groupVersion"] == "v1"
    _, namespaces = http(api_server, "GET", "/api/v1/namespaces")
    assert {"default", "runai-lanes"} <= {item["metadata"]["name"] for item in namespaces["items"]}


def test_finalizers_hold_deletion_and_owners_take_their_dependents_along(api_server):
    _, owner = http(api_server, "POST", PVCS, {**claim("owner"), "metadata": {"name": "owner", "finalizers": ["x/y"]}})
    dependent = claim("dependent")
    dependent["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "owner",
                                                 "uid": owner["metadata"]["uid"]}]
    http(api_server, "POST", PVCS, dependent)
    _, marked = http(api_server, "DELETE", f"{PVCS}/owner")
    assert marked["metadata"]["deletionTimestamp"] and http(api_server, "GET", f"{PVCS}/owner")[0] == 200
    http(api_server, "PATCH", f"{PVCS}/owner", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    assert http(api_server, "GET", f"{PVCS}/owner")[0] == 404
    api_server.wait_for(lambda: http(api_server, "GET", f"{PVCS}/dependent")[0] == 404,
                        message="the garbage collector to delete the dependent")


def test_watch_resumes_from_a_resource_version_and_expires_when_too_old(api_server):
    _, first = http(api_server, "POST", PVCS, claim("w1"))
    http(api_server, "POST", PVCS, claim("w2"))
    since = first["metadata"]["resourceVersion"]
    url = f"{api_server.url}{PVCS}?watch=true&resourceVersion={since}&timeoutSeconds=1"
    with urllib.request.urlopen(url, timeout=5) as response:
        events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w2")]
    api_server.call(api_server.emulator.compact)
    with urllib.request.urlopen(url, timeout=5) as response:
        (expired,) = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert expired["type"] == "ERROR" and expired["object"]["code"] == 410


def test_faults_hit_a_share_of_client_requests_but_never_the_simulated_cluster(api_server):
    api_server.set_faults(FaultPlan(error_rate=0.5, conflict_rate=0.5, seed=1))
    codes = [http(api_server, "PATCH", f"{PVCS}/missing", {"a": 1}, "application/merge-patch+json")[0]
             for _ in range(20)]
    assert set(codes) == {500, 409}
    assert http(api_server, "GET", PVCS, agent="lanex-cluster-sim/1")[0] == 200
    calls = api_server.calls()
    assert {(c.verb, c.status) for c in calls if c.user_agent == "tests/1"} == {("patch", 500), ("patch", 409)}
    assert all(c.at > 0 for c in calls)
