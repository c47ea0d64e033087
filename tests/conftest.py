"""Shared fixtures: an emulated Kubernetes cluster on 127.0.0.1 and the real operator against it.

`api_server` is the kmock-based API server emulator with the simulated cluster controllers
(tests/k8s); `operator_factory` starts the real kopf operator (`python -m lanex_operator.controller.runtime`)
as a subprocess with a kubeconfig for that server; `running_operator` is one already started.
Imports of the test-side cluster happen inside the fixtures so that tests which do not use them
never load kopf or kmock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The session fails when a process the tests started outlives them (tests/process_guard.py).
from process_guard import pytest_sessionfinish, pytest_sessionstart  # noqa: E402,F401


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Any]:
    """The emulated cluster (k8s.harness.EmulatedCluster): HTTP API server plus simulated controllers."""
    from k8s.harness import EmulatedCluster

    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    cluster = EmulatedCluster(tmp_path, namespaces=("default", "runai-lanes", "team-b"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def operator_factory(api_server: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Start operator processes against `api_server`; `env` overrides LANEX_OPERATOR_* settings."""
    from k8s.operator_proc import OperatorProcess

    started: list[OperatorProcess] = []

    def start(env: dict[str, str] | None = None) -> OperatorProcess:
        process = OperatorProcess(api_server.kubeconfig, tmp_path, env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    _attach_operator_logs(request, started)


def _attach_operator_logs(request: pytest.FixtureRequest, started: list[Any]) -> None:
    """A failed test's report carries the operators' logs: a timeout on a child that never appeared is
    otherwise silent about why (a crash, a refusal, a wait the operator chose)."""
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for index, process in enumerate(started):
        tail = process.logs()[-20000:]
        report.sections.append((f"operator {index} log (last 20 kB)", tail))  # shown in the failure summary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the real control plane are marked real_cluster (so `make test` can run them in a
    session of their own beside the rest: scripts/run_tests.py); tests marked session_audit judge
    everything the session did on the real cluster: they run last."""
    for item in items:
        if "real_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_cluster)
    items.sort(key=lambda item: item.get_closest_marker("session_audit") is not None)  # stable: order kept


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell in their teardown whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def running_operator(operator_factory: Callable[..., Any]) -> Any:
    """One running operator process (k8s.operator_proc.OperatorProcess)."""
    return operator_factory()


# ---- the real control plane (tools/cluster/lanex_cluster), shared by the whole session

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_TOOLS = REPO_ROOT / "tools" / "cluster"


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Upstream etcd, kube-apiserver, controllers and kwok on 127.0.0.1 (lanex_cluster.LocalCluster).

    Without Go or the built binaries the tests that use it skip and say why; under CI=true a
    control plane that cannot be had fails them instead, since CI builds the binaries first.
    """
    import os
    import sys

    if str(CLUSTER_TOOLS) not in sys.path:
        sys.path.insert(0, str(CLUSTER_TOOLS))
    from lanex_cluster.build import BuildError, missing_binaries
    from lanex_cluster.cluster import LocalCluster

    try:
        missing = missing_binaries()
    except BuildError as error:  # no Go on this machine
        missing = [str(error)]
    if missing:
        reason = f"the real control plane is not built ({'; '.join(missing)}): run `make cluster-binaries`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def lanex_on_cluster(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """lanex on the real control plane (k8s.real_operator.LanexOnCluster), shared by the session."""
    from k8s.real_operator import lanex_on_cluster_session

    yield from lanex_on_cluster_session(real_cluster, tmp_path_factory)
