"""The chart's RBAC rules grant exactly what the real operator uses, in both install modes.

Why it exists: a missing rule is a 403 in production that no unit test sees, and a spare rule is
privilege nobody needs. So the real operator (`python -m lanex_operator.controller.runtime`, kopf included)
runs through the lifecycle scenarios against the emulated API server, which records every request
with its client's User-Agent: kopf's own client sends `kopf/<version>`, the operator's client
`lanex-operator/<version>`, the simulated cluster controllers `lanex-cluster-sim/1`, and the test
writes straight into the store (no HTTP, not recorded). The operator's requests, as
(apiGroup, resource[/subresource], verb), must all be granted by the rendered chart, and every
granted rule must be used by some scenario or be in `GRANTED_BUT_NOT_SEEN` with its reason.

Scenarios: a Kubeflow run, a RUN:ai run, a restore from a snapshot, a training failure, a dataset
volume that never binds, a preflight with a missing storage class, a Kueue experiment whose
LocalQueue is missing, an existing claim, a child that already exists (as after a crash), a hung
launcher restarted (stallAction Restart, with the chart value that grants it), private sources (an
opted-in Secret and ServiceAccount, whose labels are read as metadata only), and a deletion with
retention Delete. A second operator serves
two namespaces only, and each of its requests must be authorized by the namespaced install's Roles
in that namespace (or its small ClusterRole for cluster-scoped resources).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from chart_rbac import Permission, grants_by_scope, granted_permissions
from k8s.emulator import SYSTEM_USER_AGENT, ApiCall
from k8s.harness import EmulatedCluster
from k8s.operator_proc import OPERATOR_USER_AGENTS, OperatorProcess
from k8s.scenarios import child_counts, condition, experiment, get_experiment, wait_phase

pytestmark = pytest.mark.timeout(180)

NAMESPACES = ("default", "runai-lanes", "team-b")
SERVED = ["default", "runai-lanes"]  # the namespaced install serves these, not team-b
# The optional grants on, so that every rule the chart can grant is exercised (the defaults: tests/test_chart.py).
GRANT_VALUES = {"stallRestart": {"deleteLauncherPods": True}}
NAMESPACED_VALUES = {"watchNamespaces": SERVED, **GRANT_VALUES}

# Granted although no scenario's request needs it; each with the reason. Keep this list short.
GRANTED_BUT_NOT_SEEN: dict[Permission, str] = {
    ("lanex.dev", "laneexperiments/finalizers", "update"):
        "children are created with ownerReferences blockOwnerDeletion: true (kopf.adopt); the "
        "OwnerReferencesPermissionEnforcement admission plugin (not emulated) checks this permission on "
        "the owner then, without any request to the finalizers subresource",
    ("lanex.dev", "lanesweeps/finalizers", "update"):
        "a sweep's trials and prepare Job carry ownerReferences with blockOwnerDeletion: true (kopf.adopt); "
        "the same admission plugin checks this permission on the sweep",
}


@dataclasses.dataclass(frozen=True)
class Recording:
    """What one operator run did: its requests, and the experiments' outcomes the test checks."""

    calls: tuple[ApiCall, ...]
    namespaced: Mapping[str, bool]  # resource plural -> namespaced (from the emulator's registry)
    outcomes: Mapping[str, Any]

    def operator_calls(self) -> list[ApiCall]:
        return [call for call in self.calls if call.user_agent.startswith(OPERATOR_USER_AGENTS)]

    def used(self) -> set[Permission]:
        return {permission(call) for call in self.operator_calls()}


def permission(call: ApiCall) -> Permission:
    """The RBAC rule a request needs: GET item -> get, GET collection -> list, ?watch -> watch,
    POST -> create, PUT -> update, PATCH -> patch, DELETE -> delete (the emulator's request log)."""
    return (call.group, call.resource, call.verb)


def authorized(call: ApiCall, scopes: Mapping[str | None, set[Permission]], namespaced: bool) -> bool:
    """Whether Roles (per namespace) and ClusterRoles (scope None) allow one request, as the apiserver's
    RBAC authorizer decides: a namespaced request by either, a cluster-scoped or all-namespaces one by a
    ClusterRole only."""
    needed = permission(call)
    if needed in scopes.get(None, set()):
        return True
    return namespaced and call.namespace is not None and needed in scopes.get(call.namespace, set())


# --- running the operator -------------------------------------------------------------------------


class NamespacedOperator(OperatorProcess):
    """The operator serving a list of namespaces, as the chart starts it with `watchNamespaces`."""

    def __init__(self, kubeconfig: Path, workdir: Path, namespaces: Iterable[str],
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(kubeconfig, workdir, env)
        self.namespaces = list(namespaces)

    def start(self, timeout: float = 20.0) -> NamespacedOperator:
        self.starts += 1
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        scope = [f"--namespace={namespace}" for namespace in self.namespaces]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lanex_operator.controller.runtime", *scope,
                 "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        self._wait_ready(timeout)
        return self


def started_cluster(workdir: Path) -> EmulatedCluster:
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return EmulatedCluster(workdir, namespaces=NAMESPACES).start()


def recording(cluster: EmulatedCluster, outcomes: Mapping[str, Any]) -> Recording:
    time.sleep(0.3)  # let the last watch events and Event posts land in the request log
    plurals = {spec.plural: spec.namespaced for spec in cluster.call(lambda: list(cluster.emulator._specs.values()))}
    return Recording(calls=tuple(cluster.calls()), namespaced=plurals, outcomes=dict(outcomes))


def gone(cluster: EmulatedCluster, plural: str, name: str, namespace: str = "default") -> bool:
    return cluster.get(plural, name, namespace) is None


def run_lifecycle_scenarios(cluster: EmulatedCluster) -> dict[str, Any]:
    """Every scenario at once (they are independent), then the restore and the deletion; returns outcomes."""
    cluster.knobs.fail_mpijobs["rbac-fail"] = "RuntimeError: CUDA out of memory (rank 1)"
    cluster.knobs.fail_binding["rbac-nobind"] = "ANF capacity pool premium has no space left"
    cluster.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "shared-tusimple", "namespace": "default",
                                 "annotations": {"lanex.dev/prepared": "true"}},
                    "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "azurenetappfiles",
                             "resources": {"requests": {"storage": "200Gi"}}}})
    # A Job under the deterministic name that the operator's cache does not know (no experiment
    # label), as after a crash between the create and its watch event: create answers AlreadyExists.
    # It completes only after the operator has read it unfinished: no watch event tells of that.
    cluster.knobs.paused.add("Job/rbac-again-prepare")
    cluster.create({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": "rbac-again-prepare", "namespace": "default"},
                    "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                   "containers": [{"name": "prepare", "image": "busybox"}]}}}})
    cluster.create(experiment("rbac-kubeflow"))
    cluster.create(experiment("rbac-runai", namespace="runai-lanes",
                              spec={"scheduler": {"type": "runai", "project": "lanes"}}))
    cluster.create(experiment("rbac-fail"))
    cluster.create(experiment("rbac-nobind"))
    cluster.create(experiment("rbac-preflight", spec={"dataset": {"storageClassName": "anf-missing"}}))
    cluster.create(experiment("rbac-kueue", spec={"scheduler": {"type": "kueue", "queueName": "no-such-queue"}}))
    cluster.create(experiment("rbac-claim", spec={"dataset": {"synthetic": None,
                                                              "existingClaim": {"claimName": "shared-tusimple"}}}))
    cluster.create(experiment("rbac-again"))
    cluster.create(experiment("rbac-drop", spec={"retention": {"dataset": "Delete", "snapshots": "Delete"}}))
    # A sweep: dataset once, three trials, the held laggard stopped early, the best one kept, then deleted.
    cluster.knobs.val_accuracy["rbac-sweep-002"] = [0.1]
    cluster.knobs.paused.add("MPIJob.running/rbac-sweep-002")
    cluster.create({"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep",
                    "metadata": {"name": "rbac-sweep", "namespace": "default"},
                    "spec": {"template": experiment("template", spec={"training": {"epochs": 2}})["spec"],
                             "parameters": [{"path": "learningRate", "values": [0.01, 0.02, 0.04]}],
                             "parallelism": 3, "earlyStopping": {"minEpochs": 1, "minTrials": 2},
                             "retention": {"keepBest": 1, "dataset": "Delete"}}})
    # Private sources: a Secret and a ServiceAccount their owners opted in (the operator reads their labels only).
    for kind, plural in (("Secret", "secrets"), ("ServiceAccount", "serviceaccounts")):
        cluster.create({"apiVersion": "v1", "kind": kind, "metadata": {
            "name": "rbac-mirror", "namespace": "default", "labels": {"lanex.dev/usable-by-experiments": "true"}},
            **({"stringData": {"Authorization": "Bearer rbac"}} if kind == "Secret" else {})})
    private = experiment("rbac-private", spec={"dataset": {"download": {"urls": [
        {"url": "https://data.example.com/tusimple/test_label.json", "secretRef": {"name": "rbac-mirror"}}]},
        "prepareServiceAccountName": "rbac-mirror"}})
    del private["spec"]["dataset"]["synthetic"]
    cluster.create(private)
    cluster.knobs.stall_logging.add("rbac-stall")  # its launcher hangs until the operator deletes the pod
    cluster.create(experiment("rbac-stall", spec={"training": {"stallTimeoutSeconds": 1, "stallAction": "Restart"}}))

    outcomes: dict[str, Any] = {}
    cluster.wait_for(lambda: any(c["type"] == "DataPrepared" and c["status"] == "Unknown" for c in
                                 (get_experiment(cluster, "rbac-again").get("status") or {}).get("conditions") or []),
                     timeout=40, message="rbac-again to wait for the existing Job rbac-again-prepare")
    cluster.knobs.paused.discard("Job/rbac-again-prepare")
    source = wait_phase(cluster, "rbac-kubeflow", ["Succeeded", "Failed"])
    snapshot = source["status"]["provenance"]["resultSnapshot"]
    cluster.create(experiment("rbac-restore", spec={"dataset": {"synthetic": None,
                                                                "fromSnapshot": {"snapshotName": snapshot}}}))
    for name, namespace in (("rbac-kubeflow", "default"), ("rbac-runai", "runai-lanes"), ("rbac-fail", "default"),
                            ("rbac-nobind", "default"), ("rbac-claim", "default"), ("rbac-again", "default"),
                            ("rbac-drop", "default"), ("rbac-restore", "default"), ("rbac-stall", "default"),
                            ("rbac-private", "default")):
        exp = wait_phase(cluster, name, ["Succeeded", "Failed"], namespace=namespace, timeout=40)
        outcomes[name] = (exp["status"]["phase"], exp["status"].get("reason"))
    cluster.wait_for(lambda: condition(get_experiment(cluster, "rbac-preflight"), "Preflight")["status"] == "False",
                     message="the missing storage class in the Preflight condition")
    outcomes["rbac-preflight"] = condition(get_experiment(cluster, "rbac-preflight"), "Preflight")["reason"]
    cluster.wait_for(lambda: condition(get_experiment(cluster, "rbac-kueue"), "Preflight")["status"] == "False",
                     message="the missing Kueue LocalQueue in the Preflight condition")
    outcomes["rbac-kueue"] = condition(get_experiment(cluster, "rbac-kueue"), "Preflight")["reason"]
    outcomes["rbac-again jobs"] = child_counts(cluster, "rbac-again")["jobs"] + int(
        cluster.get("jobs", "rbac-again-prepare", "default") is not None)
    outcomes["owner references"] = [ref for plural, name in (("jobs", "rbac-kubeflow-prepare"),
                                                             ("mpijobs", "rbac-kubeflow-train"))
                                    for ref in cluster.get(plural, name, "default")["metadata"]["ownerReferences"]]

    drop_snapshot = get_experiment(cluster, "rbac-drop")["status"]["provenance"]["resultSnapshot"]
    cluster.delete("laneexperiments", "rbac-drop", "default")
    cluster.wait_for(lambda: gone(cluster, "laneexperiments", "rbac-drop")
                     and gone(cluster, "persistentvolumeclaims", "rbac-drop-data")
                     and gone(cluster, "volumesnapshots", drop_snapshot),
                     message="retention Delete to remove the experiment's claim and snapshot")
    outcomes["rbac-drop deleted"] = True

    cluster.wait_for(lambda: ((cluster.get("lanesweeps", "rbac-sweep", "default") or {}).get("status") or {})
                     .get("phase") in ("Succeeded", "Failed"), timeout=60, message="the sweep to finish")
    swept = (cluster.get("lanesweeps", "rbac-sweep", "default") or {})["status"]
    outcomes["rbac-sweep"] = (swept["phase"], swept["counts"]["stopped"], len(cluster.list(
        "laneexperiments", "default", label_selector="lanex.dev/sweep=rbac-sweep")))
    cluster.delete("lanesweeps", "rbac-sweep", "default")
    cluster.wait_for(lambda: gone(cluster, "lanesweeps", "rbac-sweep") and gone(cluster, "volumesnapshots",
                                                                                  "rbac-sweep-dataset"),
                     message="the sweep and its dataset snapshot (retention.dataset Delete) to be gone")
    return outcomes


@pytest.fixture(scope="module")
def all_namespaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    """The operator as the default install runs it (all namespaces), through every scenario."""
    workdir = tmp_path_factory.mktemp("rbac-all-namespaces")
    cluster = started_cluster(workdir)
    # Long enough for the claims that do bind on a loaded machine, short enough for the one that never does.
    operator = OperatorProcess(cluster.kubeconfig, workdir, {"LANEX_OPERATOR_DATASET_BOUND_TIMEOUT_SECONDS": "10",
                                                             "LANEX_OPERATOR_DELETE_LAUNCHER_PODS": "true"})
    try:
        operator.start()
        yield recording(cluster, run_lifecycle_scenarios(cluster))
    finally:
        operator.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def two_namespaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    """The operator as the chart runs it with watchNamespaces: [default, runai-lanes]."""
    workdir = tmp_path_factory.mktemp("rbac-two-namespaces")
    cluster = started_cluster(workdir)
    operator = NamespacedOperator(cluster.kubeconfig, workdir, SERVED, {"LANEX_OPERATOR_DELETE_LAUNCHER_PODS": "true"})
    try:
        operator.start()
        cluster.create(experiment("ns-kubeflow", spec={"retention": {"dataset": "Delete", "snapshots": "Delete"}}))
        cluster.create(experiment("ns-runai", namespace="runai-lanes",
                                  spec={"scheduler": {"type": "runai", "project": "lanes"}}))
        cluster.create(experiment("ns-unserved", namespace="team-b"))
        outcomes = {name: wait_phase(cluster, name, ["Succeeded", "Failed"], namespace=namespace)["status"]["phase"]
                    for name, namespace in (("ns-kubeflow", "default"), ("ns-runai", "runai-lanes"))}
        cluster.delete("laneexperiments", "ns-kubeflow", "default")
        cluster.wait_for(lambda: gone(cluster, "laneexperiments", "ns-kubeflow"))
        outcomes["ns-unserved"] = get_experiment(cluster, "ns-unserved", "team-b").get("status")
        yield recording(cluster, outcomes)
    finally:
        operator.stop()
        cluster.stop()


# --- the default install: one ClusterRole -------------------------------------------------------


def test_the_scenarios_ran_to_their_expected_outcomes(all_namespaces):
    outcomes = all_namespaces.outcomes
    for name in ("rbac-kubeflow", "rbac-runai", "rbac-claim", "rbac-again", "rbac-drop", "rbac-restore",
                 "rbac-stall", "rbac-private"):
        assert outcomes[name] == ("Succeeded", None), (name, outcomes[name])
    assert outcomes["rbac-fail"] == ("Failed", "TrainingFailed")
    assert outcomes["rbac-nobind"] == ("Failed", "DatasetFailed")
    assert outcomes["rbac-preflight"] == "MissingStorageClass"
    assert outcomes["rbac-kueue"] == "MissingLocalQueue"
    assert outcomes["rbac-again jobs"] == 1  # the existing Job was read, not duplicated
    assert outcomes["rbac-drop deleted"] is True
    assert outcomes["rbac-sweep"] == ("Succeeded", 1, 1)  # one trial stopped early, the best one kept


def test_every_request_is_from_the_operator_or_the_simulated_cluster(all_namespaces):
    agents = {call.user_agent for call in all_namespaces.calls}
    unknown = {agent for agent in agents if not agent.startswith((*OPERATOR_USER_AGENTS, SYSTEM_USER_AGENT))}
    assert unknown == set()
    # Both of the operator's clients were seen, so neither can slip past the filter unnoticed.
    assert {prefix for prefix in OPERATOR_USER_AGENTS if any(a.startswith(prefix) for a in agents)} == set(
        OPERATOR_USER_AGENTS)


def test_every_request_of_the_operator_is_granted_by_the_default_install(all_namespaces):
    granted = granted_permissions(GRANT_VALUES)
    denied = sorted({(permission(call), call.method, call.path) for call in all_namespaces.operator_calls()
                     if permission(call) not in granted})
    assert denied == [], f"the chart does not grant: {denied}"


def test_every_rule_of_the_default_install_is_used_by_a_scenario(all_namespaces):
    unused = granted_permissions(GRANT_VALUES) - all_namespaces.used()
    assert unused == set(GRANTED_BUT_NOT_SEEN), (
        f"granted but never used (drop them from templates/_rbac.tpl, or allow-list them with the reason): "
        f"{sorted(unused - set(GRANTED_BUT_NOT_SEEN))}; allow-listed but used or not granted: "
        f"{sorted(set(GRANTED_BUT_NOT_SEEN) - unused)}")


def test_the_allow_listed_finalizers_rule_is_needed_by_the_owner_references_the_operator_writes(all_namespaces):
    references = all_namespaces.outcomes["owner references"]
    assert references and all(ref["kind"] == "LaneExperiment" and ref["blockOwnerDeletion"] is True
                              for ref in references), references


def test_the_operator_reads_only_launcher_logs_and_deletes_only_launcher_pods(all_namespaces):
    granted = granted_permissions(GRANT_VALUES)
    assert ("", "pods/log", "get") in granted  # the progress reads (issue 13); `lanex logs` uses the user's rights
    pods = [call for call in all_namespaces.operator_calls() if call.resource in ("pods/log", "pods")
            and call.verb in ("get", "delete")]
    assert pods and all("-train-launcher-" in (call.name or "") for call in pods), pods
    assert any(call.verb == "delete" for call in pods)  # rbac-stall's launcher was restarted
    assert not {permission for permission in granted if permission[2] in ("update", "deletecollection", "*")
                and permission[1] not in ("laneexperiments/finalizers", "lanesweeps/finalizers")}


def test_the_operator_reads_secrets_and_service_accounts_only_by_name_and_as_metadata(all_namespaces):
    reads = [call for call in all_namespaces.operator_calls() if call.resource in ("secrets", "serviceaccounts")]
    assert {(call.resource, call.name) for call in reads} == {("secrets", "rbac-mirror"), ("serviceaccounts", "rbac-mirror")}
    assert all(call.verb == "get" and call.metadata_only for call in reads), reads


# --- the namespaced install: a Role per served namespace, a small ClusterRole ---------------------


def test_the_namespaced_operator_serves_only_its_namespaces(two_namespaces):
    assert two_namespaces.outcomes["ns-kubeflow"] == "Succeeded"
    assert two_namespaces.outcomes["ns-runai"] == "Succeeded"
    assert two_namespaces.outcomes["ns-unserved"] is None  # team-b is not served: untouched
    touched = {call.namespace for call in two_namespaces.operator_calls()}
    assert touched == {None, *SERVED}


def test_every_request_of_the_namespaced_operator_is_authorized_in_its_namespace(two_namespaces):
    scopes = grants_by_scope(NAMESPACED_VALUES)
    denied = sorted({(permission(call), call.namespace, call.method, call.path)
                     for call in two_namespaces.operator_calls()
                     if not authorized(call, scopes, two_namespaces.namespaced[call.resource.split("/")[0]])},
                    key=str)
    assert denied == [], f"the namespaced install does not authorize: {denied}"


def test_namespaced_grants_live_only_in_the_served_namespaces(all_namespaces, two_namespaces):
    scopes = grants_by_scope(NAMESPACED_VALUES)
    assert set(scopes) == {None, *SERVED}
    namespaced = all_namespaces.namespaced
    cluster_wide = scopes[None]
    assert {resource for _, resource, _ in cluster_wide if namespaced[resource.split("/")[0]]} == set(), (
        "the namespaced install's ClusterRole must not grant namespaced resources")
    default_install = granted_permissions(GRANT_VALUES)
    for namespace in SERVED:
        assert scopes[namespace] == {p for p in default_install if namespaced[p[1].split("/")[0]]}
    # Its cluster-scoped rules are the default install's plus what kopf uses to follow namespaces.
    assert cluster_wide - default_install == {("", "namespaces", "list"), ("", "namespaces", "watch")}
    assert cluster_wide - default_install <= two_namespaces.used()
    unused = (cluster_wide | scopes["default"]) - two_namespaces.used() - all_namespaces.used()
    assert unused == set(GRANTED_BUT_NOT_SEEN)
