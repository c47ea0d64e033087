"""`lanex ui` against the real control plane (tools/cluster), as a ServiceAccount that may only read.

The account gets get/list/watch on LaneExperiments, LaneSweeps and Events in one namespace (the
chart's UI role) and nothing else; the home page lists an experiment with its phase, the phase the
operator writes next reaches an open page's event stream through the app's watch, and the audit log
shows that the app only ever listed and watched (no request per row, no write).
"""

from __future__ import annotations

import http.client
import json
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

import pytest
import yaml

from ui_server import lanex_ui

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRDS = {"laneexperiments.lanex.dev": ROOT / "crds" / "lanex.dev_laneexperiments.yaml",
        "lanesweeps.lanex.dev": ROOT / "crds" / "lanex.dev_lanesweeps.yaml"}
NAMESPACE = "ui-read"
ACCOUNT = "ui-reader"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"

pytestmark = pytest.mark.slow

READ_ONLY = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": NAMESPACE}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": ACCOUNT, "namespace": NAMESPACE},
     "rules": [{"apiGroups": ["lanex.dev"], "resources": ["laneexperiments", "lanesweeps"],
                "verbs": ["get", "list", "watch"]},
               {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": ACCOUNT, "namespace": NAMESPACE},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
     "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}]},
]


@pytest.fixture(scope="module")
def cluster(real_cluster: Any) -> Iterator[Any]:
    from k8s.real_operator import operators_paused

    real_cluster.apply_files(list(CRDS.values()))
    real_cluster.wait_established(list(CRDS))
    real_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(READ_ONLY))
    # These tests write the statuses an operator would; the session's operator (it serves every namespace)
    # would drive the same objects and race them, so it waits, paused, until they are done.
    with operators_paused():
        yield real_cluster


def reader_kubeconfig(cluster: Any, path: pathlib.Path) -> pathlib.Path:
    from lanex_cluster.kubeconfig import kubeconfig_for, write_kubeconfig

    token = cluster.kubectl("create", "token", ACCOUNT, "-n", NAMESPACE, "--duration=1h").stdout.strip()
    return write_kubeconfig(path, kubeconfig_for(cluster.server, cluster.ca_cert, token=token))


def set_status(cluster: Any, name: str, status: dict[str, Any]) -> None:
    cluster.kubectl("patch", "laneexperiment", name, "-n", NAMESPACE, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))


def ui_calls(cluster: Any) -> list[dict[str, Any]]:
    from lanex_cluster.audit import completed_calls

    return completed_calls(cluster.audit_log, USER)


def test_the_home_page_lists_an_experiment_and_follows_its_phase_with_read_only_rights(
        cluster: Any, tmp_path: pathlib.Path) -> None:
    can_write = cluster.kubectl("auth", "can-i", "create", "laneexperiments.lanex.dev", "-n", NAMESPACE,
                                f"--as={USER}", check=False).stdout.strip()
    assert can_write == "no"
    experiment = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
                  "metadata": {"name": "seen", "namespace": NAMESPACE}, "spec": {"dataset": {"synthetic": {}}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(experiment))
    set_status(cluster, "seen", {"phase": "Training", "progressSummary": "3/30 10%", "eta": "9m"})
    kubeconfig = reader_kubeconfig(cluster, tmp_path / "reader.kubeconfig")
    with lanex_ui("--kubeconfig", str(kubeconfig), "-n", NAMESPACE) as (url, _):
        port = urllib.parse.urlsplit(url).port
        home = json.loads(urllib.request.urlopen(f"{url}api/home", timeout=10).read())
        (row,) = home["experiments"]
        assert (row["name"], row["phase"], row["progress"]) == ("seen", "Training", "3/30 10%")
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'data-name="seen"' in page and ">Training<" in page
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        stream.request("GET", "/events")
        response = stream.getresponse()
        # the raw chunked body: chunk sizes between the events' lines (each event is one chunk)
        assert any(response.fp.readline().startswith(b"event: hello") for _ in range(3))
        set_status(cluster, "seen", {"phase": "Succeeded", "results": {"accuracy": 0.9512, "fp": 0.03, "fn": 0.04}})
        deadline = time.monotonic() + 30
        seen = None
        while time.monotonic() < deadline and seen is None:
            line = response.fp.readline().decode()
            if line.startswith("data: ") and '"row"' in line:
                message = json.loads(line[6:])
                if message["name"] == "seen" and message["row"]["phase"] == "Succeeded":
                    seen = message["row"]
        stream.close()
        assert seen is not None and seen["accuracy"] == "0.9512" and seen["phaseClass"] == "ok"
        detail = urllib.request.urlopen(f"{url}experiments/seen", timeout=10).read().decode()
        assert "reads only the Kubernetes API" in detail  # what is shown instead of the pictures, and why
    calls = ui_calls(cluster)
    verbs = {call["verb"] for call in calls}
    assert calls and verbs <= {"list", "watch", "get"}, verbs
    # one list and one watch per kind (experiments, sweeps, events), however many rows and pages
    resources = {(call["objectRef"].get("resource"), call["verb"]) for call in calls}
    assert resources <= {(kind, verb) for kind in ("laneexperiments", "lanesweeps", "events")
                         for verb in ("list", "watch", "get")}, resources
    assert len([c for c in calls if c["verb"] == "list"]) <= 6


def test_the_charts_dashboard_runs_as_its_own_service_account_over_every_namespace(
        cluster: Any, tmp_path: pathlib.Path) -> None:
    # What `helm install --set ui.enabled=true` creates for the dashboard, applied as rendered (the chart's own
    # ServiceAccount, ClusterRole and binding), and the Deployment's own arguments: every namespace, all
    # addresses, so a token on every request. kwok runs no container, so the process runs here, as that account.
    from chart_rbac import manifests, render_chart

    release, namespace = "lanex-ui", "lanex-ui"
    objects = [o for o in manifests(render_chart({"ui": {"enabled": True}}, release=release, namespace=namespace))
               if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "ui"]
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["ui", "--all-namespaces", "--host"] and "--allow-actions" not in args
    cluster.ensure_namespace(namespace)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]))
    user = f"system:serviceaccount:{namespace}:{account}"
    for verb in ("create", "delete", "patch"):
        assert cluster.kubectl("auth", "can-i", verb, "laneexperiments.lanex.dev", "-A", f"--as={user}",
                               check=False).stdout.strip() == "no"
    assert cluster.kubectl("auth", "can-i", "get", "secrets", "-A", f"--as={user}", check=False).stdout.strip() == "no"
    for where in (NAMESPACE, "ui-elsewhere"):
        cluster.ensure_namespace(where)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
            "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
            "metadata": {"name": f"in-{where}", "namespace": where}, "spec": {"dataset": {"synthetic": {}}}}))
    from lanex_cluster.kubeconfig import kubeconfig_for, write_kubeconfig

    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    kubeconfig = write_kubeconfig(tmp_path / "ui.kubeconfig", kubeconfig_for(cluster.server, cluster.ca_cert, token=token))
    port_at = args.index("--port") + 1
    with lanex_ui("--kubeconfig", str(kubeconfig), *args[1:port_at], "0", *args[port_at + 1:]) as (url, lines):
        assert "?token=" in url, lines  # a non-loopback bind: a token, printed at start
        base, ui_token = url.split("?token=")
        local = base.replace("0.0.0.0", "127.0.0.1")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{local}api/home", timeout=10)
        assert refused.value.code in (401, 403)
        request = urllib.request.Request(f"{local}api/home", headers={"Authorization": f"Bearer {ui_token}"})
        wanted = {f"{NAMESPACE}/in-{NAMESPACE}", "ui-elsewhere/in-ui-elsewhere"}  # -A: rows named namespace/name
        deadline = time.monotonic() + 30
        names: set[str] = set()
        while time.monotonic() < deadline and not wanted <= names:
            names = {row["name"] for row in json.loads(urllib.request.urlopen(request, timeout=10).read())["experiments"]}
            time.sleep(0.3)
        assert wanted <= names, names
    from lanex_cluster.audit import completed_calls

    calls = completed_calls(cluster.audit_log, user)
    assert calls and {call["verb"] for call in calls} <= {"list", "watch", "get"}
    assert all(call["responseStatus"].get("code", 200) < 400 for call in calls), \
        [(c["verb"], c["requestURI"], c["responseStatus"]) for c in calls if c["responseStatus"].get("code", 200) >= 400]
