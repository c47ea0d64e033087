"""Benchmark: the API load of `lanex ui` on a cluster, with pages open (the real control plane, tools/cluster).

`lanex ui --kubeconfig` runs as a ServiceAccount that may only read (the role of tests/test_ui_cluster.py);
the namespace holds `--experiments` LaneExperiments whose status an admin rewrites `--writes-per-second`
times a second (as the operator does while they train). With `--pages` home pages open (each a GET and
an event stream) the benchmark counts, from kube-apiserver's audit log, every request the app's account
made during `--seconds`, and prints requests per second (a watch, not a poll per row or per page: the
figure should stay near 0 however many rows and pages), plus the row events the pages received.

    python benchmarks/bench_ui_cluster.py --experiments 100 --pages 10 --seconds 30
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import pathlib
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tools" / "cluster")]

import yaml  # noqa: E402
from lanex_cluster.cluster import LocalCluster  # noqa: E402
from test_ui_cluster import CRDS, NAMESPACE, READ_ONLY, USER, reader_kubeconfig, set_status  # noqa: E402
from ui_server import lanex_ui  # noqa: E402


def experiment(name: str) -> dict:
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"dataset": {"synthetic": {}}}}


def count_rows(port: int, counts: list[int], index: int, stop: threading.Event) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/events")
    response = connection.getresponse()
    while not stop.is_set():
        try:
            line = response.fp.readline()
        except OSError:
            continue
        if line.startswith(b"event: row"):
            counts[index] += 1
    connection.close()


def audited(cluster: LocalCluster, since: datetime.datetime, until: datetime.datetime) -> list[dict]:
    """The app's requests received between `since` and `until`, once each (by audit id)."""
    seen = {}
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != USER:
            continue
        received = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if since <= received < until:
            seen[event["auditID"]] = event
    return list(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--writes-per-second", type=float, default=5.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lanex-bench-ui-cluster-") as folder:
        cluster = LocalCluster(pathlib.Path(folder) / "cluster")
        cluster.start()
        try:
            cluster.apply_files(list(CRDS.values()))
            cluster.wait_established(list(CRDS))
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(READ_ONLY))
            names = [f"exp-{i:03d}" for i in range(args.experiments)]
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([experiment(n) for n in names]))
            kubeconfig = reader_kubeconfig(cluster, pathlib.Path(folder) / "reader.kubeconfig")
            app_start = datetime.datetime.now(datetime.timezone.utc)
            with lanex_ui("--kubeconfig", str(kubeconfig), "-n", NAMESPACE) as (url, _):
                port = urllib.parse.urlsplit(url).port
                time.sleep(2.0)  # the app's lists and watches are set up
                since = datetime.datetime.now(datetime.timezone.utc)
                stop = threading.Event()
                counts = [0] * args.pages
                readers = []
                for page in range(args.pages):
                    assert urllib.request.urlopen(url, timeout=30).status == 200
                    reader = threading.Thread(target=count_rows, args=(port, counts, page, stop), daemon=True)
                    reader.start()
                    readers.append(reader)
                writes, started = 0, time.monotonic()
                while time.monotonic() - started < args.seconds:
                    name = names[writes % len(names)]
                    set_status(cluster, name, {"phase": "Training", "progressSummary": f"{writes % 30 + 1}/30 50%"})
                    writes += 1
                    time.sleep(max(0.0, started + writes / args.writes_per_second - time.monotonic()))
                until = datetime.datetime.now(datetime.timezone.utc)
                time.sleep(1.0)
                stop.set()
            time.sleep(1.0)  # the watches' audit records are written when they end (the app has stopped)
            lifetime = audited(cluster, app_start, datetime.datetime.now(datetime.timezone.utc))
            calls = audited(cluster, since, until)
            window = (until - since).total_seconds()
            by_kind: dict[str, int] = {}
            for call in calls:
                key = f"{call['verb']} {call.get('objectRef', {}).get('resource', '?')}"
                by_kind[key] = by_kind.get(key, 0) + 1
            print(f"{args.experiments} experiments, {args.pages} home pages open, {writes} status writes in {window:.0f} s")
            print(f"app's API requests: {len(calls)} in {window:.0f} s = {len(calls) / window:.2f} requests/s "
                  f"({', '.join(f'{k}: {v}' for k, v in sorted(by_kind.items())) or 'none'})")
            print(f"over the app's whole life: {len(lifetime)} requests ("
                  + ", ".join(sorted(f"{c['verb']} {c.get('objectRef', {}).get('resource', '?')}" for c in lifetime))
                  + ")")
            print(f"row events received by the pages: {sum(counts)} ({min(counts)}-{max(counts)} per page)")
            print(f"summary: {len(calls) / window:.2f} apiserver requests/s with {args.pages} pages open "
                  f"and {args.experiments} experiments")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
