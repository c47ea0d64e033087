"""A `lanex run` workspace as the UI sees it: the records of `lanex get --workspace -o json`, kept
current by ONE scanner for every open page.

The records are those of `local_runner.local_experiments` and `local.sweep.workspace_sweeps` (the
CLI's own readers), and the row cells those of `local_commands.local_row`/`sweep_row`. The scanner
stats each experiment's state.json, progress.json and log (a few stats per experiment, no reads)
and re-reads an experiment only when one of them changed, or every few seconds while it is not
finished (its `lanex run` may have been killed, which changes no file). Both files are replaced
atomically by their writers, so nothing is ever seen half-written and nothing is locked.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

from lanex_operator.ui import records
from lanex_operator.ui.logs import TerminalText, read_appended, read_steps
from lanex_operator.ui.source import ActionError, Change

RECHECK_RUNNING_S = 3.0  # a run that is not finished is re-read this often even when no file changed
SAMPLES_KEPT = 2000  # images/s, data wait and GPU samples kept per experiment (one per progress change)
IMAGE_NAMES = ("curves.png", "worst.png")
WATCHED_PARTS = ("state", "progress", "log", "log")  # what a change of each of `_watched`'s files means


def _stamp(paths: list[Optional[Path]]) -> tuple:
    stamps = []
    for path in paths:
        try:
            info = os.stat(path) if path is not None else None
            stamps.append(None if info is None else (info.st_mtime_ns, info.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class LocalSource:
    kind = "local"

    def __init__(self, workspace: Path, interval_s: float = 0.5) -> None:
        from lanex_operator.local.runner import Workspace

        self.workspace = Workspace(workspace.resolve())
        self.where = str(workspace)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}  # name -> the CLI's record
        self._states: dict[str, dict[str, Any]] = {}  # name -> state.json (timeline, lineage, spec)
        self._rows: dict[str, dict[str, Any]] = {}
        self._stamps: dict[str, tuple] = {}
        self._checked: dict[str, float] = {}
        self._sweeps: dict[str, dict[str, Any]] = {}
        self._sweep_rows: dict[str, dict[str, Any]] = {}
        self._sweep_stamps: dict[str, tuple] = {}
        self._trial_of: dict[str, str] = {}  # trial experiment -> its sweep
        self._samples: dict[str, deque] = {}
        self._closed = threading.Event()
        self.scan(0)

    # -- files --------------------------------------------------------------------------------
    def _experiment_dir(self, name: str) -> Path:
        return self.workspace.experiment_dir(name)

    def output_dir(self, name: str) -> Optional[Path]:
        record = self._records.get(name) or {}
        progress_file = record.get("progressFile")
        return Path(progress_file).parent if progress_file else None

    def _watched(self, name: str, record: Optional[dict[str, Any]]) -> list[Optional[Path]]:
        """The files whose change means the experiment changed: state, progress, logs (in WATCHED_PARTS order)."""
        progress_file = (record or {}).get("progressFile")
        exp_dir = self._experiment_dir(name)
        return [exp_dir / "state.json", Path(progress_file) if progress_file else None, exp_dir / "logs" / "train.log",
                exp_dir / "logs" / "prepare.log"]

    # -- scanning -------------------------------------------------------------------------------
    def scan(self, timeout: float) -> list[Change]:
        """Wait `timeout` seconds (the scan interval), then report every experiment and sweep that changed."""
        if timeout and self._closed.wait(timeout):
            return []
        changes = self._scan_sweeps()
        changes += self._scan_experiments()
        return changes

    def _scan_experiments(self) -> list[Change]:
        from lanex_operator.local.runner import LocalRunError, local_experiments

        root = self.workspace.root / "experiments"
        try:
            names = {entry.name for entry in os.scandir(root) if entry.is_dir()}
        except FileNotFoundError:
            names = set()
        changes = []
        now = time.monotonic()
        for name in sorted(names):
            known = name in self._records
            record = self._records.get(name)
            stamp = _stamp(self._watched(name, record))
            running = known and record.get("phase") not in records.FINAL_PHASES and record.get("running") is not False
            if known and stamp == self._stamps.get(name) and not (running and now - self._checked.get(name, 0)
                                                                  > RECHECK_RUNNING_S):
                continue
            try:
                found = local_experiments(self.workspace.root, name)
            except LocalRunError:
                continue  # a state.json being created: the next scan reads it
            if not found:
                continue
            old_stamp = self._stamps.get(name) or (None,) * 4
            new = found[0]
            if new.get("progressFile") != (record or {}).get("progressFile"):
                stamp = _stamp(self._watched(name, new))
            parts = frozenset(part for part, before, after in zip(WATCHED_PARTS, old_stamp, stamp) if before != after)
            self._checked[name] = now
            self._stamps[name] = stamp
            if known and new == record and not parts:
                continue
            changes.append(self._store(name, new, parts))
        for gone in set(self._records) - names:
            with self._lock:
                for table in (self._records, self._states, self._rows, self._stamps, self._samples):
                    table.pop(gone, None)
            changes.append(Change("experiment", gone, None))
        return changes

    def _store(self, name: str, record: dict[str, Any], parts: frozenset[str]) -> Change:
        try:
            state = json.loads((self._experiment_dir(name) / "state.json").read_text())
        except (OSError, ValueError):
            state = self._states.get(name, {})
        row = self._row(name, record)
        with self._lock:
            previous_progress = (self._records.get(name) or {}).get("progress")
            self._records[name], self._states[name] = record, state
            row_changed = self._rows.get(name) != row
            self._rows[name] = row
            progress = record.get("progress")
            if progress and progress != previous_progress:
                self._samples.setdefault(name, deque(maxlen=SAMPLES_KEPT)).append(_sample(progress))
        return Change("experiment", name, row, row_changed, parts)

    def _row(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        from lanex import ExperimentRecord
        from lanex_operator.cli.local_views import LOCAL_GET_HEADERS, local_row
        from lanex_operator.cli.views import age, decimal

        cells = dict(zip(LOCAL_GET_HEADERS, local_row(ExperimentRecord.from_workspace(record))))
        results = record.get("results") or {}
        shown = {"name": name, "phase": cells["PHASE"], "progress": cells["PROGRESS"], "eta": cells["ETA"],
                 "loss": cells["LOSS"], "rate": cells["IMG/S"], "valAcc": cells["VAL ACC"],
                 "accuracy": cells["ACCURACY"], "fp": decimal(results.get("fp")), "fn": decimal(results.get("fn")),
                 "snapshot": cells["SNAPSHOT"], "age": age(record.get("startTime"))}
        final = record.get("phase") in records.FINAL_PHASES
        return records.experiment_view(shown, name=name, phase=record.get("phase"), progress=record.get("progress"),
                                       started=record.get("startTime"), final=final, sweep=self._trial_of.get(name),
                                       message=record.get("message"))

    def _scan_sweeps(self) -> list[Change]:
        from lanex_operator.local.sweep import SWEEPS_DIR, workspace_sweeps

        root = self.workspace.root / SWEEPS_DIR
        paths = sorted(root.glob("*/state.json")) if root.is_dir() else []
        stamps = {path.parent.name: _stamp([path]) for path in paths}
        if stamps == self._sweep_stamps:
            return []
        changed = {name for name, stamp in stamps.items() if self._sweep_stamps.get(name) != stamp}
        gone = set(self._sweep_stamps) - set(stamps)
        self._sweep_stamps = stamps
        found = {sweep["name"]: sweep for sweep in workspace_sweeps(self.workspace.root) if sweep.get("name")}
        changes = []
        with self._lock:
            self._sweeps = found
            self._trial_of = {row["name"]: name for name, sweep in found.items() for row in sweep.get("trials") or []
                              if row.get("name")}
            for name in sorted(changed & set(found)):
                row = self._sweep_row(found[name])
                row_changed = self._sweep_rows.get(name) != row
                self._sweep_rows[name] = row
                changes.append(Change("sweep", name, row, row_changed, frozenset({"state"})))
            for name in gone:
                self._sweep_rows.pop(name, None)
                changes.append(Change("sweep", name, None))
        return changes

    def _sweep_row(self, sweep: dict[str, Any]) -> dict[str, Any]:
        from lanex import SweepRecord
        from lanex_operator.cli.local_views import SWEEP_GET_HEADERS, sweep_row
        from lanex_operator.cli.views import age

        cells = dict(zip(SWEEP_GET_HEADERS, sweep_row(SweepRecord.from_workspace(sweep))))
        shown = {"name": sweep["name"], "phase": cells["PHASE"], "trials": cells["TRIALS"], "running": cells["RUNNING"],
                 "best": cells["BEST"], "objective": cells["OBJECTIVE"], "dataset": cells["DATASET"],
                 "age": age(sweep.get("startTime"))}
        return records.sweep_view(shown, name=sweep["name"], started=sweep.get("startTime"),
                                  final=sweep.get("phase") in records.FINAL_PHASES)

    def close(self) -> None:
        self._closed.set()

    # -- pages ----------------------------------------------------------------------------------
    def home(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            experiments = [dict(self._rows[name], sweep=self._trial_of.get(name, "")) for name in sorted(self._rows)]
            sweeps = [self._sweep_rows[name] for name in sorted(self._sweep_rows)]
        return experiments, sweeps

    def record(self, name: str) -> Optional[dict[str, Any]]:
        """The experiment as `lanex get NAME --workspace -o json` prints it."""
        return self._records.get(name)

    def experiment(self, name: str) -> Optional[dict[str, Any]]:
        from lanex_operator.local.sweep import validation_history
        from lanex_trainer.progress import progress_text

        with self._lock:
            record, state, row = self._records.get(name), self._states.get(name, {}), self._rows.get(name)
        if record is None:
            return None
        output = self.output_dir(name)
        progress = record.get("progress") or {}
        results_file = _read_json(output / "results.json") if output else None
        snapshots = list(state.get("snapshots") or [])
        restored_from = ((state.get("steps") or {}).get("dataset") or {}).get("restoredFrom")
        return {
            "name": name, "kind": "experiment", "row": dict(row or {}), "record": record,
            "progressText": progress_text(progress) if progress else "",
            "progress": progress, "gpus": progress.get("gpus") or [],
            "validation": validation_history(output) if output else [],
            "timeline": self._timeline(state, record),
            "events": None, "eventsNote": "Local runs have no Kubernetes Events: the timeline above is their record.",
            "results": _results(results_file),
            "spec": records.flat_items({"training": state.get("training") or {}}),
            "provenance": [(label, value) for label, value in (
                ("Dataset source", state.get("datasetSource")), ("Config hash", state.get("configHash")),
                ("Run id", (results_file or {}).get("run_id")), ("Output", str(output) if output else None),
                ("Volume", ((state.get("steps") or {}).get("dataset") or {}).get("volume"))) if value],
            "datasetSource": state.get("datasetSource"),
            "lineage": {"from": restored_from, "fromExperiment": self._snapshot_owner(restored_from),
                        "snapshots": snapshots, "restoredBy": self._restored_by(snapshots)},
            "restore": {snap: records.restore_commands(snap, name, workspace=self.where) for snap in snapshots},
            "images": self._images(name, output),
            "imagesNote": None,
            "mlflow": records.mlflow_link(state, results_file),
            "sweep": self._trial_of.get(name),
            "logName": "train.log" if (self._experiment_dir(name) / "logs" / "train.log").exists() else "prepare.log",
        }

    def _timeline(self, state: dict[str, Any], record: dict[str, Any]) -> list[dict[str, str]]:
        """The local counterpart of the conditions: each step of the plan with its state and time, then the end."""
        entries = []
        for step, info in (state.get("steps") or {}).items():
            details = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("snapshot", "restoredFrom", "note"))
            entries.append({"type": step, "status": str(info.get("state", "")), "reason": "",
                            "time": str(info.get("time", "")), "message": details})
        phase = record.get("phase")
        if phase in records.FINAL_PHASES:
            what_to_do = "" if phase == "Succeeded" else " Run the same `lanex run` again: it continues from the failed step."
            entries.append({"type": phase, "status": "True", "reason": str(state.get("reason") or ""),
                            "time": str(state.get("completionTime") or ""),
                            "message": (str(state.get("message") or "") + (what_to_do if phase == "Failed" else "")).strip()})
        elif record.get("running") is False:
            entries.append({"type": "Stopped", "status": "True", "reason": "", "time": "",
                            "message": "its `lanex run` is no longer running; run it again to resume"})
        return entries

    def _snapshot_owner(self, snapshot: Optional[str]) -> Optional[str]:
        if not snapshot:
            return None
        for info in self.workspace.snapshots.list():
            if info.name == snapshot:
                return info.experiment
        return None

    def _restored_by(self, snapshots: list[str]) -> list[str]:
        wanted = set(snapshots)
        with self._lock:
            return sorted(name for name, state in self._states.items()
                          if ((state.get("steps") or {}).get("dataset") or {}).get("restoredFrom") in wanted)

    def _images(self, name: str, output: Optional[Path]) -> dict[str, Any]:
        found: dict[str, Any] = {"overlays": []}
        if output is None:
            return found
        for file in IMAGE_NAMES:
            if (output / file).is_file():
                found[file.split(".")[0]] = f"/files/{name}/{file}"
        overlays = output / "overlays"
        if overlays.is_dir():
            found["overlays"] = [f"/files/{name}/overlays/{p.name}" for p in sorted(overlays.iterdir())
                                 if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
        return found

    def image(self, name: str, path: str) -> Optional[Path]:
        """The file of an image the experiment page links (nothing else of the volume is served)."""
        output = self.output_dir(name)
        if output is None:
            return None
        if path in IMAGE_NAMES:
            candidate = output / path
        else:
            folder, _, file = path.partition("/")
            overlays = output / "overlays"
            if folder != "overlays" or not overlays.is_dir() or file not in os.listdir(overlays):
                return None
            candidate = overlays / file
        return candidate if candidate.is_file() else None

    def samples(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._samples.get(name) or [])

    def steps(self, name: str, offset: int) -> tuple[list[list[float]], int]:
        return read_steps(self.output_dir(name), offset)

    def log(self, name: str, offset: int, follower: Optional[TerminalText] = None) -> tuple[list[str], int]:
        logs = self._experiment_dir(name) / "logs"
        path = logs / "train.log" if (logs / "train.log").exists() else logs / "prepare.log"
        data, offset = read_appended(path, offset)
        return (follower or TerminalText()).lines(data), offset

    def sweep(self, name: str) -> Optional[dict[str, Any]]:
        from lanex_operator.cli.sweep_views import TRIAL_HEADERS, best_line, trial_rows
        from lanex_operator.local.sweep import validation_history

        with self._lock:
            status = self._sweeps.get(name)
            row = self._sweep_rows.get(name)
        if status is None:
            return None
        best = (status.get("bestTrial") or {}).get("name")
        trials = []
        for trial, cells in zip(status.get("trials") or [], trial_rows(status)):
            trial_name = str(trial.get("name"))
            record = self._records.get(trial_name) or {}
            output = self.output_dir(trial_name)
            trials.append({"name": trial_name, "cells": cells, "parameters": trial.get("parameters") or {},
                           "phase": trial.get("phase") or "Pending", "reason": trial.get("reason") or "",
                           "message": record.get("message") or "", "objective": trial.get("objective"),
                           "best": trial_name == best, "exists": trial_name in self._records,
                           "history": validation_history(output) if output else []})
        return {"name": name, "kind": "sweep", "row": dict(row or {}), "status": status, "headers": TRIAL_HEADERS,
                "trials": trials, "best": best, "bestLine": best_line(status, "accuracy"),
                "events": None}

    def compare(self, names: list[str]) -> dict[str, Any]:
        import lanex
        from lanex_operator.cli.sweep_views import compare_rows, differing_training, run_dict

        try:
            runs = [run_dict(run) for run in lanex.Workspace(self.workspace.root).compare(list(names))]
        except lanex.LocalRunError as error:
            raise ActionError(str(error)) from None
        differing = differing_training({run["name"]: run.get("training") or {} for run in runs})
        for run in runs:
            if run.get("parameters") is None:
                run["parameters"] = differing.get(run["name"], {})
        headers, rows = compare_rows(runs)
        steps = {run["name"]: self.steps(run["name"], 0)[0] for run in runs}
        return {"names": [run["name"] for run in runs], "headers": headers, "rows": rows,
                "validation": records.compare_series(runs), "steps": steps}

    # -- actions (only routed with --allow-actions) --------------------------------------------
    def stop(self, name: str) -> str:
        from lanex_operator.local.actions import stop_local
        from lanex_operator.local.runner import LocalRunError

        try:
            return stop_local(self.workspace.root, name)
        except LocalRunError as error:
            raise ActionError(str(error)) from None

    def delete(self, name: str) -> str:
        from lanex_operator.local.actions import delete_local
        from lanex_operator.local.runner import LocalRunError

        try:
            return delete_local(self.workspace.root, name)
        except LocalRunError as error:
            raise ActionError(str(error)) from None


def _sample(progress: dict[str, Any]) -> dict[str, Any]:
    gpus = progress.get("gpus") or []
    return {"t": progress.get("updatedAt"), "step": progress.get("step"), "rate": progress.get("imagesPerSecond"),
            "wait": progress.get("dataWaitFraction"),
            "gpuUtil": (sum(float(g.get("utilizationPercent") or 0) for g in gpus) / len(gpus)) if gpus else None,
            "gpuMem": (sum(int(g.get("memoryUsedBytes") or 0) for g in gpus) / 2**30) if gpus else None}


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _results(results: Optional[dict[str, Any]]) -> list[tuple[str, str]]:
    """results.json's headline figures as label/value pairs."""
    if not results:
        return []
    from lanex_operator.cli.views import decimal

    pairs = [("Accuracy", decimal(results.get("accuracy"))), ("FP rate", decimal(results.get("fp"))),
             ("FN rate", decimal(results.get("fn"))),
             ("Images/s", "-" if results.get("images_per_second") is None else f"{results['images_per_second']:.1f}"),
             ("Epochs", str(results.get("epochs", "-"))), ("Steps", str(results.get("steps", "-"))),
             ("World size", str(results.get("world_size", "-"))), ("Checkpoint", str(results.get("checkpoint") or "-"))]
    validation = results.get("validation") or {}
    if validation:
        pairs.append(("Last validation", ", ".join(f"{k} {decimal(v)}" for k, v in validation.items()
                                                   if k in ("accuracy", "fp", "fn"))))
    return pairs
