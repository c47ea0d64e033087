"""A cluster as `lanex ui` sees it: LaneExperiments, LaneSweeps and their Events, WATCHED.

One watch per resource kind (experiments, sweeps, Events) feeds one in-memory cache shared by every
open page: the API server sees a list and a long-lived watch per kind, whatever the number of pages
or rows (no poll per row). Each watch resumes from its last resourceVersion and lists again after
410 Gone. It runs with the user's own credentials (their kubeconfig, or the chart's read-only
ServiceAccount): get, list and watch of the lanex objects and Events are all it needs.

Rows are the CLI's (`views.experiment_row`, `sweep_views.sweep_row`, `trial_rows`); progress
figures come from `status.progress` (the trainer's newest record, copied there by the operator).
The pictures and the training log are not in the API: the pictures live on the experiment's volume
and the log in its launcher pod, which read-only access to the lanex objects cannot reach; the page
says where they are and which command shows them.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from lanex_operator.ui import records
from lanex_operator.ui.source import ActionError, Change

SAMPLES_KEPT = 2000
EVENTS_KEPT = 5000
WATCH_S = 300  # a watch's server-side timeout; it is then resumed from its resourceVersion
RETRY_S = 2.0  # after a failed list or watch (apiserver restarting, network)


class ResourceWatch(threading.Thread):
    """list + watch of one resource kind (namespaced or across namespaces), each object handed to `on_event`."""

    def __init__(self, list_call: Callable[..., Any], on_event: Callable[[str, dict[str, Any]], None],
                 on_listed: Callable[[list[dict[str, Any]]], None], name: str) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self.list_call, self.on_event, self.on_listed = list_call, on_event, on_listed
        self.stopped = threading.Event()
        self.synced = threading.Event()
        self.requests = 0  # lists and watches started: the API load this app puts on the server

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version: Optional[str] = None
        while not self.stopped.is_set():
            try:
                if version is None:
                    self.requests += 1
                    listing = json.loads(self.list_call(_preload_content=False).data)
                    self.on_listed(listing.get("items") or [])
                    version = (listing.get("metadata") or {}).get("resourceVersion")
                    self.synced.set()
                self.requests += 1
                stream = watch.Watch()
                for event in stream.stream(self.list_call, resource_version=version, timeout_seconds=WATCH_S,
                                           allow_watch_bookmarks=True, _request_timeout=(10, WATCH_S + 10),
                                           deserialize=False):
                    if self.stopped.is_set():
                        stream.stop()
                        return
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        version = None if obj.get("code") == 410 else version
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        self.on_event(event["type"], obj)
            except ApiException as error:
                if error.status == 410:
                    version = None  # history compacted: list again
                    continue
                if error.status in (401, 403):  # no access (yet): the page shows nothing of this kind
                    self.on_listed([])
                    self.synced.set()
                self.stopped.wait(RETRY_S)
            except Exception:  # connection dropped, apiserver restarting: resume shortly
                self.stopped.wait(RETRY_S)


class ClusterSource:
    kind = "cluster"

    def __init__(self, cluster: Any, all_namespaces: bool = False) -> None:
        from lanex_operator.api.models import GROUP, PLURAL, VERSION
        from lanex_operator.api.sweep import SWEEP_PLURAL

        self.cluster, self.all_namespaces = cluster, all_namespaces
        self.where = f"{cluster.server}, " + ("all namespaces" if all_namespaces else f"namespace {cluster.namespace}")
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, dict[str, Any]]] = {"experiment": {}, "sweep": {}}
        self._rows: dict[str, dict[str, dict[str, Any]]] = {"experiment": {}, "sweep": {}}
        self._events: deque = deque(maxlen=EVENTS_KEPT)
        self._samples: dict[str, deque] = {}
        self._changes: "queue.Queue[Change]" = queue.Queue()
        custom, core, ns = cluster.custom, cluster.core, cluster.namespace

        def lister(plural: str) -> Callable[..., Any]:
            if all_namespaces:
                return lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, plural, **kw)
            return lambda **kw: custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural, **kw)

        events = (lambda **kw: core.list_event_for_all_namespaces(**kw)) if all_namespaces else \
            (lambda **kw: core.list_namespaced_event(ns, **kw))
        self.watches = [
            ResourceWatch(lister(PLURAL), lambda t, o: self._on_object("experiment", t, o),
                          lambda items: self._on_listed("experiment", items), "laneexperiments"),
            ResourceWatch(lister(SWEEP_PLURAL), lambda t, o: self._on_object("sweep", t, o),
                          lambda items: self._on_listed("sweep", items), "lanesweeps"),
            ResourceWatch(events, self._on_event, self._on_events_listed, "events"),
        ]
        for watcher in self.watches:
            watcher.start()
        for watcher in self.watches:
            watcher.synced.wait(30)

    @classmethod
    def connect(cls, kubeconfig: Optional[Any], context: Optional[str], namespace: Optional[str],
                all_namespaces: bool = False) -> "ClusterSource":
        from lanex_operator.client.cluster import ClusterClient

        cluster = ClusterClient.connect(namespace, context, str(kubeconfig) if kubeconfig else None)
        return cls(cluster, all_namespaces)

    @property
    def requests(self) -> int:
        return sum(w.requests for w in self.watches)

    # -- the cache -------------------------------------------------------------------------------
    def key(self, obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace')}/{meta.get('name')}" if self.all_namespaces else str(meta.get("name"))

    def _on_listed(self, kind: str, items: list[dict[str, Any]]) -> None:
        fresh = {self.key(obj): obj for obj in items}
        with self._lock:
            gone = set(self._objects[kind]) - set(fresh)
        for key in gone:
            self._on_object(kind, "DELETED", self._objects[kind][key])
        for obj in fresh.values():
            self._on_object(kind, "MODIFIED", obj)

    def _on_object(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        key = self.key(obj)
        with self._lock:
            if event == "DELETED":
                self._objects[kind].pop(key, None)
                self._rows[kind].pop(key, None)
                self._samples.pop(key, None)
                change = Change(kind, key, None)
            else:
                previous = self._objects[kind].get(key)
                self._objects[kind][key] = obj
                row = self._experiment_row(key, obj) if kind == "experiment" else self._sweep_row(key, obj)
                row_changed = self._rows[kind].get(key) != row
                self._rows[kind][key] = row
                progress = (obj.get("status") or {}).get("progress")
                if kind == "experiment" and isinstance(progress, dict) and \
                        progress != ((previous or {}).get("status") or {}).get("progress"):
                    self._samples.setdefault(key, deque(maxlen=SAMPLES_KEPT)).append(progress)
                change = Change(kind, key, row, row_changed, frozenset({"state", "progress"}))
        self._changes.put(change)

    def _on_events_listed(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._events.clear()
            self._events.extend(items)

    def _on_event(self, event: str, obj: dict[str, Any]) -> None:
        involved = obj.get("involvedObject") or {}
        with self._lock:
            self._events.append(obj)
        if involved.get("kind") == "LaneExperiment":
            name = involved.get("name")
            key = f"{involved.get('namespace')}/{name}" if self.all_namespaces else str(name)
            row = self._rows["experiment"].get(key)
            if row is not None:
                self._changes.put(Change("experiment", key, row, False, frozenset({"events"})))

    def _experiment_row(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        from lanex_operator.api.sweep import SWEEP_LABEL
        from lanex_operator.cli.views import EXPERIMENT_HEADERS, decimal, experiment_row, status_of

        cells = dict(zip(EXPERIMENT_HEADERS, experiment_row(obj)))
        status = status_of(obj)
        progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
        results = status.get("results") or {}
        rate = progress.get("imagesPerSecond")
        shown = {"name": key, "phase": cells["PHASE"], "progress": cells["PROGRESS"], "eta": cells["ETA"],
                 "loss": decimal(progress.get("loss")), "rate": "-" if rate is None else f"{rate:.1f}",
                 "valAcc": decimal((progress.get("validation") or {}).get("accuracy")),
                 "accuracy": cells["ACCURACY"], "fp": decimal(results.get("fp")), "fn": decimal(results.get("fn")),
                 "snapshot": cells["SNAPSHOT"], "age": cells["AGE"]}
        sweep = ((obj.get("metadata") or {}).get("labels") or {}).get(SWEEP_LABEL)
        if sweep and self.all_namespaces:
            sweep = f"{obj['metadata'].get('namespace')}/{sweep}"
        return records.experiment_view(shown, name=key, phase=status.get("phase"), progress=progress,
                                       started=obj["metadata"].get("creationTimestamp"),
                                       final=status.get("phase") in records.FINAL_PHASES, sweep=sweep,
                                       message=status.get("message"))

    def _sweep_row(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        from lanex_operator.cli.sweep_views import SWEEP_HEADERS, sweep_row

        cells = dict(zip(SWEEP_HEADERS, sweep_row(obj, datetime.now(timezone.utc))))
        status = obj.get("status") or {}
        shown = {"name": key, "phase": cells["PHASE"], "trials": cells["TRIALS"], "running": cells["RUNNING"],
                 "best": cells["BEST"], "objective": cells["OBJECTIVE"], "dataset": status.get("datasetSnapshot") or "-",
                 "age": cells["AGE"]}
        return records.sweep_view(shown, name=key, started=obj["metadata"].get("creationTimestamp"),
                                  final=status.get("phase") in records.FINAL_PHASES)

    # -- the source ----------------------------------------------------------------------------------
    def scan(self, timeout: float) -> list[Change]:
        try:
            changes = [self._changes.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                changes.append(self._changes.get_nowait())
            except queue.Empty:
                return changes

    def close(self) -> None:
        for watcher in self.watches:
            watcher.stopped.set()

    def home(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            return ([self._rows["experiment"][k] for k in sorted(self._rows["experiment"])],
                    [self._rows["sweep"][k] for k in sorted(self._rows["sweep"])])

    def _object(self, kind: str, key: str) -> Optional[dict[str, Any]]:
        with self._lock:
            return self._objects[kind].get(key)

    def experiment(self, key: str) -> Optional[dict[str, Any]]:
        from lanex_operator.cli.views import age, picture_paths, status_of
        from lanex_operator.plan.objects import children_of
        from lanex_trainer.progress import progress_text

        obj = self._object("experiment", key)
        if obj is None:
            return None
        status, spec, meta = status_of(obj), obj.get("spec") or {}, obj["metadata"]
        namespace = meta.get("namespace") or self.cluster.namespace
        progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
        names = children_of(obj)
        involved = {("LaneExperiment", meta["name"])} | {(kind, names[k]) for kind, k in (
            ("PersistentVolumeClaim", "datasetClaim"), ("Job", "prepareJob"), ("MPIJob", "mpiJob")) if names.get(k)}
        with self._lock:
            events = [e for e in self._events if (e.get("metadata") or {}).get("namespace", namespace) == namespace
                      and ((e.get("involvedObject") or {}).get("kind"), (e.get("involvedObject") or {}).get("name"))
                      in involved]
        events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")
        snapshots = [r["name"] for r in status.get("snapshots") or [] if r.get("name")]
        provenance = status.get("provenance") or {}
        restored_from = ((spec.get("dataset") or {}).get("fromSnapshot") or {}).get("snapshotName")
        pictures = picture_paths(obj)
        where = (f"on the experiment's volume (PVC {names.get('datasetClaim')}, {', '.join(pictures.values())})"
                 + (f" and in its result snapshot {snapshots[-1]}" if snapshots else "")) if pictures else \
            "on the experiment's volume once training has ended"
        return {
            "name": key, "kind": "experiment", "row": dict(self._rows["experiment"].get(key) or {}), "record": obj,
            "progressText": progress_text(progress) if progress else "", "progress": progress,
            "gpus": progress.get("gpus") or [],
            "validation": [dict(h) for h in progress.get("validationHistory") or [] if isinstance(h, dict)],
            "timeline": [{"type": c.get("type", ""), "status": c.get("status", ""), "reason": c.get("reason") or "",
                          "time": c.get("lastTransitionTime") or "", "message": c.get("message") or ""}
                         for c in status.get("conditions") or []],
            "events": [[age(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp")),
                        e.get("type", ""), e.get("reason", ""),
                        f"{(e.get('involvedObject') or {}).get('kind')}/{(e.get('involvedObject') or {}).get('name')}",
                        (e.get("message") or "").replace("\n", " ")] for e in events],
            "eventsNote": "",
            "results": [(label, str(value)) for label, value in (
                ("Accuracy", (status.get("results") or {}).get("accuracy")), ("FP rate", (status.get("results") or {}).get("fp")),
                ("FN rate", (status.get("results") or {}).get("fn")),
                ("Images/s", (status.get("results") or {}).get("imagesPerSecond")),
                ("Epochs", (status.get("results") or {}).get("epochs")),
                ("Checkpoint", (status.get("results") or {}).get("checkpoint"))) if value is not None],
            "spec": records.flat_items({"spec": spec}),
            "provenance": [(label, provenance[k]) for k, label in (
                ("trainerImage", "Image"), ("configHash", "Config hash"), ("datasetSource", "Data source"),
                ("resultSnapshot", "Snapshot")) if provenance.get(k)],
            "datasetSource": provenance.get("datasetSource"),
            "lineage": {"from": restored_from, "fromExperiment": None, "snapshots": snapshots,
                        "restoredBy": self._restored_by(snapshots)},
            "restore": {snap: records.restore_commands(snap, meta["name"], namespace=namespace) for snap in snapshots},
            "images": {"overlays": []},
            "imagesNote": (f"The pictures are {where}. This page reads only the Kubernetes API (read-only access to "
                           f"the lanex objects and Events), which cannot open volumes: restore the snapshot "
                           f"(commands below) and look at its experiments/{meta['name']}/ folder."),
            "mlflow": records.mlflow_link(status, status.get("results")),
            "sweep": self._rows["experiment"].get(key, {}).get("sweep") or None,
            "logName": f"not in the API: `lanex logs {meta['name']} -n {namespace} -f` follows it",
        }

    def _restored_by(self, snapshots: list[str]) -> list[str]:
        wanted = set(snapshots)
        with self._lock:
            return sorted(key for key, obj in self._objects["experiment"].items()
                          if (((obj.get("spec") or {}).get("dataset") or {}).get("fromSnapshot") or {})
                          .get("snapshotName") in wanted)

    def _trials(self, sweep_key: str) -> list[dict[str, Any]]:
        from lanex_operator.api.sweep import SWEEP_LABEL

        namespace, _, name = sweep_key.rpartition("/") if self.all_namespaces else ("", "", sweep_key)
        with self._lock:
            return [obj for obj in self._objects["experiment"].values()
                    if ((obj["metadata"].get("labels") or {}).get(SWEEP_LABEL) == name
                        and (not namespace or obj["metadata"].get("namespace") == namespace))]

    def sweep(self, key: str) -> Optional[dict[str, Any]]:
        from lanex_operator.cli.sweep_views import TRIAL_HEADERS, best_line, trial_rows

        obj = self._object("sweep", key)
        if obj is None:
            return None
        status, spec = obj.get("status") or {}, obj.get("spec") or {}
        trials = {t["metadata"]["name"]: t for t in self._trials(key)}
        prefix = key.rpartition("/")[0] + "/" if self.all_namespaces else ""
        best = (status.get("bestTrial") or {}).get("name")
        shown = []
        for trial, cells in zip(status.get("trials") or [], trial_rows(status)):
            name = str(trial.get("name"))
            trial_obj = trials.get(name) or {}
            progress = (trial_obj.get("status") or {}).get("progress") or {}
            shown.append({"name": prefix + name, "cells": cells, "parameters": trial.get("parameters") or {},
                          "phase": trial.get("phase") or "Pending", "reason": trial.get("reason") or "",
                          "message": (trial_obj.get("status") or {}).get("message") or "",
                          "objective": trial.get("objective"), "best": name == best, "exists": bool(trial_obj),
                          "history": [dict(h) for h in progress.get("validationHistory") or [] if isinstance(h, dict)]})
        metric = (spec.get("objective") or {}).get("metric", "accuracy")
        return {"name": key, "kind": "sweep", "row": dict(self._rows["sweep"].get(key) or {}), "status": status,
                "headers": TRIAL_HEADERS, "trials": shown, "best": prefix + best if best else None,
                "bestLine": best_line(status, metric), "events": None}

    def compare(self, names: list[str]) -> dict[str, Any]:
        from lanex_operator.api.sweep import TRIAL_PARAMETERS_ANNOTATION
        from lanex_operator.cli.sweep_views import compare_rows, differing_training

        runs = []
        for key in names:
            obj = self._object("experiment", key)
            if obj is None:
                raise ActionError(f"no laneexperiment {key} in {self.where}")
            annotations, status = obj["metadata"].get("annotations") or {}, obj.get("status") or {}
            progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
            runs.append({"name": key, "phase": status.get("phase"),
                         "parameters": json.loads(annotations[TRIAL_PARAMETERS_ANNOTATION])
                         if TRIAL_PARAMETERS_ANNOTATION in annotations else None,
                         "training": (obj.get("spec") or {}).get("training") or {},
                         "results": status.get("results") or {},
                         "history": [dict(h) for h in progress.get("validationHistory") or [] if isinstance(h, dict)]})
        differing = differing_training({run["name"]: run.get("training") or {} for run in runs})
        for run in runs:
            if run.get("parameters") is None:
                run["parameters"] = differing.get(run["name"], {})
        headers, rows = compare_rows(runs)
        return {"names": names, "headers": headers, "rows": rows, "validation": records.compare_series(runs),
                "steps": {key: self.steps(key, 0)[0] for key in names}}

    def steps(self, key: str, offset: int) -> tuple[list[list[float]], int]:
        """Loss and learning rate at each progress record seen (the API keeps only the newest one)."""
        with self._lock:
            seen = list(self._samples.get(key) or [])
        offset = max(0, offset)
        points = [[p["step"], p["loss"], p["learningRate"]] for p in seen[offset:]
                  if isinstance(p.get("step"), (int, float)) and p.get("loss") is not None
                  and p.get("learningRate") is not None]
        return points, len(seen)

    def log(self, key: str, offset: int, follower: Any = None) -> tuple[list[str], int]:
        return [], 0  # the launcher's log is in its pod, not in the objects this app may read

    def image(self, key: str, path: str) -> None:
        return None

    def samples(self, key: str) -> list[dict[str, Any]]:
        from lanex_operator.ui.local_source import _sample

        with self._lock:
            return [_sample(p) for p in self._samples.get(key) or []]

    def stop(self, key: str) -> str:
        import lanex
        from lanex_operator.client.cluster import ClusterClient, ClusterError

        obj = self._object("experiment", key)
        if obj is None:
            raise ActionError(f"no laneexperiment {key}")
        # The call `lanex stop NAME` makes, with this app's credentials, in the experiment's namespace.
        cluster = lanex.Cluster.on(ClusterClient(self.cluster.api_client,
                                                 obj["metadata"].get("namespace") or self.cluster.namespace))
        try:
            return cluster.stop(obj["metadata"]["name"], "stopped from lanex ui")
        except (ClusterError, lanex.ClusterError) as error:
            raise ActionError(getattr(error, "message", str(error))) from None

    def delete(self, key: str) -> str:
        from lanex_operator.client.cluster import ClusterClient, ClusterError

        obj = self._object("experiment", key)
        if obj is None:
            raise ActionError(f"no laneexperiment {key}")
        cluster = ClusterClient(self.cluster.api_client, obj["metadata"].get("namespace") or self.cluster.namespace)
        try:  # the call `lanex delete NAME` makes; the operator's finalizer applies the retention
            cluster.delete_experiment(obj["metadata"]["name"])
        except ClusterError as error:
            raise ActionError(error.message) from None
        return f"{cluster.experiment_ref(obj['metadata']['name'])} deleted (the operator applies its retention)"
