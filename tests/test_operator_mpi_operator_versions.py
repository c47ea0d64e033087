"""The operator reads the installed MPIJob CRD and adapts to the mpi-operator version it finds.

With mpi-operator 0.5.0 or later (the CRD declares `launcherCreationPolicy`) the MPIJob asks for
`WaitForWorkersReady`; with an older one the field is left out (the apiserver would refuse it with
`fieldValidation=Strict`, or silently drop it) and `lanex launch` waits for the workers itself. The
Preflight condition says which features were found.
"""

from __future__ import annotations

import copy

import pytest

from k8s.harness import UPSTREAM_MISSING, EmulatedCluster, upstream_crds
from k8s.operator_proc import OperatorProcess
from k8s.scenarios import condition, experiment, wait_phase

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(not upstream_crds(), reason=UPSTREAM_MISSING)]


def older_mpi_operator(crds: list[dict]) -> list[dict]:
    """The upstream CRDs with the MPIJob's v0.5.0+ fields removed, as an mpi-operator 0.4 installs it."""
    result = copy.deepcopy(crds)
    for crd in result:
        if crd["spec"]["names"]["kind"] == "MPIJob":
            for version in crd["spec"]["versions"]:
                spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                for field in ("launcherCreationPolicy", "runLauncherAsWorker"):
                    spec.pop(field, None)
                spec["runPolicy"]["properties"].pop("managedBy", None)
    return result


def run_one(tmp_path, crds: list[dict], name: str) -> tuple[dict, dict, str]:
    with EmulatedCluster(tmp_path, upstream=False, extra_crds=tuple(crds)) as cluster:
        operator = OperatorProcess(cluster.kubeconfig, tmp_path).start()
        try:
            cluster.create(experiment(name))
            done = wait_phase(cluster, name, ["Succeeded", "Failed"], timeout=40)
            mpijob = cluster.get("mpijobs", f"{name}-train", "default")
            return done, mpijob, operator.logs()
        finally:
            operator.stop()


def test_current_mpi_operator_gets_wait_for_workers_ready_and_the_preflight_says_so(tmp_path):
    done, mpijob, logs = run_one(tmp_path, upstream_crds(), "lanes-new")
    assert done["status"]["phase"] == "Succeeded", (done["status"], logs[-3000:])
    assert mpijob["spec"]["launcherCreationPolicy"] == "WaitForWorkersReady"
    assert condition(done, "Preflight")["message"].endswith(
        "; mpi-operator: launcherCreationPolicy (>= 0.5.0) yes, runPolicy.suspend (>= 0.4.0) yes, "
        "runPolicy.managedBy (>= 0.6.0) yes")


def test_older_mpi_operator_gets_no_launcher_policy_and_the_preflight_says_lanex_launch_waits(tmp_path):
    done, mpijob, logs = run_one(tmp_path, older_mpi_operator(upstream_crds()), "lanes-old")
    assert done["status"]["phase"] == "Succeeded", (done["status"], logs[-3000:])
    assert "launcherCreationPolicy" not in mpijob["spec"]
    assert condition(done, "Preflight")["message"].endswith(
        "; mpi-operator: launcherCreationPolicy (>= 0.5.0) no, runPolicy.suspend (>= 0.4.0) yes, "
        "runPolicy.managedBy (>= 0.6.0) no; older than 0.5.0: the launcher starts at once and `lanex launch` "
        "waits for the workers' ssh")
