"""`lanex run sweep.yaml`: a LaneSweep on this machine, the same decisions as the operator's.

The dataset is prepared once (the template's dataset and prepare steps, run by `LocalRunner`) and
the prepared volume becomes the snapshot `<sweep>-dataset` (moved, not copied). Each trial is a
local LaneExperiment (`LocalRunner`, output in its own logs) whose volume is a hard-link clone of
that snapshot, so every trial reads the very same image files and writes only its own experiment
directory. `--parallel N` trials run at once; early stopping (`plan.sweep.to_stop`, the median rule)
ends a trial's process tree and marks it Stopped; the best trial, retention and the trials table
come from the same pure functions as on the cluster.

With `template.tracking.mlflow` the sweep is an MLflow parent run with its trials' runs as children:
the sweep runs `lanex mlflow sweep-run` (the command the operator's Job runs) once before the trials and
gives them the parent's run id; a trial started while the server did not answer finds the parent itself
later, and the sweep's end (`--end`) adopts any trial run still without it. Neither waits for long: a
server that is down never holds the trials up.

State: `<workspace>/sweeps/<name>/state.json` (the sweep's status, camelCase like the CRD's) plus
each trial's own `experiments/<trial>/state.json`. Running the file again resumes: finished and
stopped trials are kept, failed or interrupted ones run again (training resumes from its newest
checkpoint), and a changed spec is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from lanex_operator.api.sweep import (
    LaneSweepSpec,
    dataset_snapshot_name,
    trial_name,
    trial_parameters,
    trial_spec,
)
from lanex_operator.local.runner import LOCAL_NAMESPACE, STATE_FILE, LocalRunError, LocalRunner, Workspace
from lanex_operator.local.secrets import SecretSourceError, secret_env
from lanex_operator.plan.steps import StepName, TrackingContext, child_names, experiment_paths, tracking_secret
from lanex_operator.plan.sweep import (TrialView, best_trial, counts, mlflow_sweep_run, next_trials, retained,
                                       to_stop)

SWEEPS_DIR = "sweeps"
COMPARE_PLOT = "compare.png"
POLL_SECONDS = 1.0
MLFLOW_WAIT_SECONDS = 5.0  # how long the sweep retries an MLflow server that does not answer, at start and end


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec_hash(spec: LaneSweepSpec) -> str:
    document = spec.model_dump(mode="json", by_alias=True)
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# --- reading a trial's progress: the one place that knows the trainer's files -------------------


def validation_history(output_dir: Path) -> list[dict[str, Any]]:
    """The trial's validations so far, oldest first: `{"epoch", "accuracy", "fp", "fn"}` each.

    From `progress.json`'s `validationHistory` (the progress contract), else, for a finished run,
    from `results.json`'s per-epoch history (`val_accuracy`, ...). Files that are half written or
    not there yet read as no history.
    """
    try:
        progress = json.loads((output_dir / "progress.json").read_text())
        entries = progress.get("validationHistory")
        if isinstance(entries, list):
            return [dict(e) for e in entries if isinstance(e, dict) and isinstance(e.get("epoch"), int)]
    except (OSError, ValueError, AttributeError):
        pass
    try:
        results = json.loads((output_dir / "results.json").read_text())
    except (OSError, ValueError):
        return []
    history = []
    for record in results.get("history") or []:
        if isinstance(record, dict) and "val_accuracy" in record:
            history.append({"epoch": record.get("epoch"), **{k[4:]: v for k, v in record.items()
                                                               if k in ("val_accuracy", "val_fp", "val_fn", "val_loss")}})
    # results.json counts epochs from 0; the contract's validationHistory from 1.
    return [dict(h, epoch=int(h["epoch"]) + 1) for h in history if isinstance(h.get("epoch"), int)]


# --- the sweep --------------------------------------------------------------------------------


@dataclass
class Trial:
    name: str
    parameters: dict[str, Any]
    runner: Optional[LocalRunner] = None
    thread: Optional[threading.Thread] = None
    retry: bool = False  # failed or interrupted last time: runs again in this run
    error: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass
class LocalSweep:
    """One LaneSweep in a workspace; `run()` drives it to the end (or until interrupted)."""

    name: str
    spec: LaneSweepSpec
    workspace_root: Path
    parallel: int = 1
    echo: Callable[[str], None] = print
    python_bin: Optional[Path] = None
    trials: list[Trial] = field(default_factory=list)
    secrets: dict[str, Any] = field(default_factory=dict)  # `--secret` sources of the template's secretRefs

    def __post_init__(self) -> None:
        self.workspace = Workspace(self.workspace_root.resolve())
        self.dir = self.workspace.root / SWEEPS_DIR / self.name
        self.state_path = self.dir / STATE_FILE
        self.state = self._load_state()
        # What ranks the trials, for readers of the state (the Python API's leaderboard).
        self.state["objective"] = {"metric": self.spec.objective.metric, "goal": self.spec.objective.direction()}
        self.trials = [Trial(trial_name(self.name, i), params) for i, params in enumerate(trial_parameters(self.spec))]
        tracking = tracking_secret(self.spec.template)
        if tracking is not None and tracking not in self.secrets:
            raise LocalRunError(f"spec.template.tracking.mlflow.credentialsSecretRef names {tracking}: pass --secret "
                                f"{tracking}=file:PATH (or =env:VAR) with its MLflow keys")
        for trial in self.trials:
            if self._trial_state(trial.name).get("phase") not in (None, "Succeeded", "Stopped"):
                trial.retry = True

    # -- state ------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        digest = spec_hash(self.spec)
        if self.state_path.is_file():
            data = json.loads(self.state_path.read_text())
            if data.get("specHash") != digest:
                raise LocalRunError(f"sweep state {self.state_path} was made by a different spec; give the sweep a new "
                                    "metadata.name, or delete that directory to start over")
            return data
        return {"name": self.name, "specHash": digest, "phase": "Pending", "startTime": _now()}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        temp = self.state_path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.state, indent=2))
        os.replace(temp, self.state_path)

    def _trial_state(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.workspace.experiment_dir(name) / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _output_dir(self, name: str) -> Path:
        volume = self.workspace.volume(child_names(name, self.spec.template).dataset_claim)
        return Path(experiment_paths(name, str(volume)).output_dir)

    # -- steps ------------------------------------------------------------------------------------
    def prepare_dataset(self) -> str:
        """The snapshot every trial clones: prepared once (then kept), or the template's fromSnapshot."""
        dataset = self.spec.template.dataset
        store = self.workspace.snapshots
        if dataset.from_snapshot is not None:
            name = dataset.from_snapshot.snapshot_name
            store.manifest(name)  # SnapshotError naming the known snapshots when it is not there
            return name
        name = dataset_snapshot_name(self.name)
        if not store.exists(name):
            self.state["phase"] = "PreparingDataset"
            self.save()
            runner = LocalRunner(self.name, self.spec.template, self.workspace.root, echo=self.echo,
                                 python_bin=self.python_bin, secrets=self.secrets, experiment_dir=self.dir / "dataset")
            runner.run(steps={StepName.DATASET, StepName.PREPARE})
            if dataset.existing_claim is not None:
                store.create(runner.volume, name, experiment=self.name)  # the user's volume stays theirs
            else:
                store.adopt(runner.volume, name, experiment=self.name)  # prepared once: it becomes the snapshot
            self.echo(f"[lanex] dataset prepared once and snapshotted as {name}")
        self.state["datasetSnapshot"] = name
        self.save()
        return name

    # -- MLflow: the parent run ---------------------------------------------------------------------
    def _tracked(self) -> bool:
        return self.spec.template.tracking is not None and self.spec.template.tracking.mlflow is not None

    def _sweep_run(self, end: Optional[str] = None, tags: Optional[dict[str, str]] = None) -> Optional[dict[str, Any]]:
        """`lanex mlflow sweep-run` (the operator's Job's command) with the credentials of `--secret`; its link,
        or None (said once) when the server did not answer."""
        uid = self.state.setdefault("mlflowSweepUid", uuid.uuid4().hex)
        run = mlflow_sweep_run(LOCAL_NAMESPACE, self.name, uid, self.spec, "local", "Never", end, tags,
                               termination_log=None, wait_seconds=MLFLOW_WAIT_SECONDS)
        argv = [str((self.python_bin or Path(sys.executable).parent) / "lanex"), *run.command[1:]]
        try:
            env = {**os.environ, **secret_env(run.secret_env, self.secrets)}
        except SecretSourceError as error:
            raise LocalRunError(f"spec.template.tracking.mlflow.credentialsSecretRef: {error}") from None
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120 + MLFLOW_WAIT_SECONDS)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            self.echo(f"[lanex] warning: MLflow parent run not {'ended' if end else 'created'}: {why}")
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])

    def _start_parent_run(self) -> None:
        if self._tracked() and not self.state.get("mlflow"):
            link = self._sweep_run()
            if link is not None:
                self.state["mlflow"] = link
                self.echo(f"[lanex] MLflow parent run {link['runId']}: {link['url']}")
            self.save()

    def _end_parent_run(self) -> None:
        if not self._tracked():
            return
        if not self.state.get("mlflow"):
            self._start_parent_run()  # the server did not answer at the start: the trials are adopted now
            if not self.state.get("mlflow"):
                return
        tags = {"lanex.phase": str(self.state.get("phase"))}
        best = self.state.get("bestTrial") or {}
        if best.get("name"):
            tags["lanex.bestTrial"] = str(best["name"])
        if best.get("objective") is not None:
            tags[f"lanex.best.{self.spec.objective.metric}"] = str(best["objective"])
        self._sweep_run("FINISHED" if self.state.get("phase") == "Succeeded" else "FAILED", tags)

    def _start(self, trial: Trial, snapshot: str) -> None:
        spec = trial_spec(self.spec, trial.parameters, snapshot)
        context = TrackingContext()
        if self._tracked():
            context = TrackingContext(sweep=self.name, sweep_uid=self.state.get("mlflowSweepUid"),
                                      parent_run_id=(self.state.get("mlflow") or {}).get("runId"))
        runner = LocalRunner(trial.name, spec, self.workspace.root, echo=lambda text: None,
                             python_bin=self.python_bin, quiet=True, secrets=self.secrets, context=context)
        if not runner.volume.exists():
            self.workspace.snapshots.clone(snapshot, runner.volume)
        trial.runner, trial.retry, trial.error = runner, False, None

        def run() -> None:
            try:
                runner.run()
            except LocalRunError as error:
                trial.error = str(error)
            except Exception as error:  # a thread must not die silently: the table shows it
                trial.error = f"{type(error).__name__}: {error}"

        trial.thread = threading.Thread(target=run, name=f"trial-{trial.name}", daemon=True)
        trial.thread.start()
        self.echo(f"[lanex] {trial.name}: started ({_parameters_text(trial.parameters)})")

    def views(self) -> list[TrialView]:
        """What the sweep knows about each trial (`plan.sweep.TrialView`), from the trials' own files."""
        views = []
        for trial in self.trials:
            state = self._trial_state(trial.name)
            phase = state.get("phase")
            if trial.active:
                phase = phase if phase not in (None, "Failed", "Succeeded", "Stopped") else "Pending"
            elif trial.retry:
                phase = None  # runs again in this run
            results = state.get("results") or {}
            metric = self.spec.objective.metric
            views.append(TrialView(trial.name, trial.parameters, phase, tuple(validation_history(self._output_dir(trial.name))),
                                   results.get(metric), (state.get("snapshots") or [None])[-1]))
        return views

    def run(self, on_update: Optional[Callable[[list[TrialView]], None]] = None) -> dict[str, Any]:
        """Prepare the dataset, run every trial to the end, decide, clean up; the sweep's status."""
        snapshot = self.prepare_dataset()
        self._start_parent_run()
        self.state.update(phase="Running", trialCount=len(self.trials))
        self.save()
        try:
            while True:
                views = self.views()
                for decision in to_stop(self.spec, views):
                    trial = next(t for t in self.trials if t.name == decision.trial)
                    if trial.runner is not None and not trial.runner.stopped:
                        message = decision.message(self.spec.val_metric)
                        trial.runner.stop(message)
                        self.echo(f"[lanex] {trial.name}: stopped early: {message}")
                room = [v for v in next_trials(self.spec.model_copy(update={"parallelism": self.parallel}), views)]
                for view in room:
                    self._start(next(t for t in self.trials if t.name == view.name), snapshot)
                views = self.views()
                self._record(views)
                if on_update is not None:
                    on_update(views)
                if not any(t.active for t in self.trials) and all(v.final for v in views):
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            for trial in self.trials:
                if trial.runner is not None and trial.active:
                    trial.runner.interrupt()
            for trial in self.trials:
                if trial.thread is not None:
                    trial.thread.join(timeout=30)
            self._record(self.views())
            raise
        return self._finish(self.views())

    def _record(self, views: Sequence[TrialView]) -> None:
        self.state["trials"] = [_row(self.spec, view, self._trial_state(view.name)) for view in views]
        self.state["counts"] = counts(views)
        best = best_trial(self.spec, views)
        self.state["bestTrial"] = None if best is None else {
            "name": best.name, "parameters": dict(best.parameters), "objective": best.objective, "snapshot": best.snapshot}
        self.save()

    def _finish(self, views: list[TrialView]) -> dict[str, Any]:
        keep = retained(self.spec, views)
        for view in views:
            if view.name not in keep:
                self._delete_trial(view)
        self._record(views)
        for row in self.state["trials"]:
            if row["name"] not in keep:
                row["deleted"] = True
        succeeded = any(v.phase == "Succeeded" for v in views)
        self.state["phase"] = "Succeeded" if succeeded else "Failed"
        if not succeeded:
            self.state["reason"] = "AllTrialsFailed"
        self.state["completionTime"] = _now()
        plot = self.dir / COMPARE_PLOT
        try:
            from lanex_trainer.curves import plot_comparison

            plot_comparison({v.name: list(v.history) for v in views}, plot, self.spec.val_metric)
            self.state["comparePlot"] = str(plot)
        except ImportError:
            self.state["comparePlot"] = None  # matplotlib comes with the trainer extra
        self.save()
        self._end_parent_run()
        return self.state

    def _delete_trial(self, view: TrialView) -> None:
        """Retention: the trial's volume and snapshots go; its state (the table row) stays."""
        volume = self.workspace.volume(child_names(view.name, self.spec.template).dataset_claim)
        if volume.exists():
            shutil.rmtree(volume)
        for info in self.workspace.snapshots.list():
            if info.experiment == view.name:
                self.workspace.snapshots.delete(info.name)


def _parameters_text(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items())


def _row(spec: LaneSweepSpec, view: TrialView, state: dict[str, Any]) -> dict[str, Any]:
    """One row of `status.trials`, with the CRD's field names."""
    last = view.history[-1] if view.history else {}
    epochs = (view.history and max(int(h["epoch"]) for h in view.history)) or None
    row = {"name": view.name, "parameters": dict(view.parameters), "phase": view.phase or "Pending",
           "reason": state.get("reason"),
           "progress": f"{epochs}/{spec.template.training.epochs}" if epochs else None,
           "valMetric": last.get(spec.val_metric), "objective": view.objective, "snapshot": view.snapshot}
    return {k: v for k, v in row.items() if v is not None}


def workspace_sweeps(workspace: Path) -> list[dict[str, Any]]:
    """Every sweep of a workspace as `lanex get --workspace -o json` lists it (the CRD status's names)."""
    root = workspace / SWEEPS_DIR
    found = []
    for path in sorted(root.glob(f"*/{STATE_FILE}")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found.append({key: data.get(key) for key in ("name", "phase", "reason", "datasetSnapshot", "trialCount",
                                                     "counts", "trials", "bestTrial", "comparePlot", "startTime",
                                                     "completionTime", "objective", "mlflow")})
    return found
