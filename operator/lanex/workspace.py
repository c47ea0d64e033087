"""`lanex.Workspace`: experiments and sweeps on this machine, as `lanex run` runs them.

Why it exists: a notebook runs, follows and compares local experiments without a terminal. A
Workspace is the folder `lanex run --workspace` uses (default `.lanex`); everything here goes
through the local runner (`lanex_operator.local`), and `lanex run`, `lanex get --workspace`,
`lanex snapshots`, `lanex stop`, `lanex delete --workspace` and `lanex compare --workspace` go
through this class, so the CLI and the API are one implementation.

`run` blocks; `start` runs the experiment on a thread of this process and returns a `RunHandle`
whose `progress()` yields a record each time the run advances (the trainer's progress file, the same
one `lanex get --workspace -w` reads), `wait()` and `stop()`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union, overload

from lanex.errors import Interrupted, LocalRunError, RunRefused
from lanex.records import ComparedRun, ExperimentRecord, RunResults, SweepRecord
from lanex.specs import Experiment, Sweep
from lanex_operator.api.status import Results
from lanex_operator.api.sweep import TrialRecord
from lanex_operator.local.runner import STATE_FILE, LocalRunner, local_experiments
from lanex_operator.local.runner import Workspace as WorkspaceLayout
from lanex_operator.local.secrets import SecretSource, parse_secret_option
from lanex_operator.local.snapshots import SnapshotInfo
from lanex_operator.local.sweep import LocalSweep, validation_history, workspace_sweeps

DEFAULT_WORKSPACE = Path(".lanex")
POLL_SECONDS = 0.5  # how often a watch reads the files a run replaces atomically (progress.json, state.json)

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _secret_sources(secrets: Iterable[str]) -> dict[str, SecretSource]:
    """`NAME=file:PATH` / `NAME=env:VAR` strings, as `lanex run --secret` takes them."""
    return {source.name: source for source in map(parse_secret_option, secrets)}


class Workspace:
    """A local workspace: volumes, experiments, sweeps and snapshots under one folder (default `.lanex`)."""

    def __init__(self, path: Union[str, Path] = DEFAULT_WORKSPACE) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    # ---- running

    def _runner(self, experiment: Experiment, secrets: Iterable[str], echo: Optional[Echo],
                show_output: bool) -> LocalRunner:
        if not isinstance(experiment, Experiment):
            raise TypeError(f"expected a lanex.Experiment, got {type(experiment).__name__}")
        sources = _secret_sources(secrets)
        try:
            return LocalRunner(experiment.name, experiment.spec, self.path, echo=echo or _quiet,
                               secrets=sources, quiet=not show_output)
        except LocalRunError as error:  # a missing secret, a state made by another spec: nothing ran
            raise RunRefused(str(error)) from None

    @overload
    def run(self, resource: Experiment, *, secrets: Iterable[str] = (), parallel: int = 1,
            echo: Optional[Echo] = None, show_output: bool = False,
            on_update: Optional[Callable[[SweepRecord], None]] = None) -> ExperimentRecord: ...

    @overload
    def run(self, resource: Sweep, *, secrets: Iterable[str] = (), parallel: int = 1,
            echo: Optional[Echo] = None, show_output: bool = False,
            on_update: Optional[Callable[[SweepRecord], None]] = None) -> SweepRecord: ...

    def run(self, resource: Union[Experiment, Sweep], *, secrets: Iterable[str] = (), parallel: int = 1,
            echo: Optional[Echo] = None, show_output: bool = False,
            on_update: Optional[Callable[[SweepRecord], None]] = None) -> Union[ExperimentRecord, SweepRecord]:
        """Run an experiment (or a sweep) to its end, here, and return its final record.

        Steps already done are skipped: running it again after a failure or an interruption continues
        where it stopped. `secrets`: `NAME=file:PATH` or `NAME=env:VAR` for the spec's secretRefs;
        `echo`: receives the runner's `[lanex] step: ...` lines; `show_output`: the steps' output on
        this process's stdout too (always in the step logs). A sweep runs `parallel` trials at once and
        calls `on_update` with its record as trials advance.

        Raises `RunRefused` (nothing ran), `ExperimentBusy`, `LocalRunError` (a step failed),
        `Interrupted` (Ctrl-C).
        """
        if isinstance(resource, Sweep):
            return self._run_sweep(resource, secrets, parallel, echo, on_update)
        runner = self._runner(resource, secrets, echo, show_output)
        runner.run()
        return self.get(resource.name)

    def _run_sweep(self, sweep: Sweep, secrets: Iterable[str], parallel: int, echo: Optional[Echo],
                   on_update: Optional[Callable[[SweepRecord], None]]) -> SweepRecord:
        if parallel < 1:
            raise RunRefused(f"parallel: must be >= 1 (got {parallel})")
        try:
            local = LocalSweep(sweep.name, sweep.spec, self.path, parallel=parallel,
                               secrets=_secret_sources(secrets), echo=echo or _quiet)
        except LocalRunError as error:
            raise RunRefused(str(error)) from None

        def updated(_views: Any) -> None:
            if on_update is not None:
                on_update(self.get_sweep(sweep.name))

        local.run(on_update=updated)
        return self.get_sweep(sweep.name)

    def start(self, experiment: Experiment, *, secrets: Iterable[str] = (),
              echo: Optional[Echo] = None) -> "RunHandle":
        """Start an experiment on a thread of this process and return at once; see `RunHandle`.

        Checks that it can start first (raising `RunRefused` or `InvalidSpecError` before anything runs).
        """
        return RunHandle(self, self._runner(experiment, secrets, echo, show_output=False))

    # ---- stopping and deleting what runs elsewhere

    def stop(self, name: str) -> str:
        """Stop the `lanex run` (in another process) of an experiment or a sweep, as Ctrl-C in its terminal
        would: training checkpoints its step and ends; running it again resumes. What was done, in one
        line; `LocalRunError` when it is not running. (A run started here: `RunHandle.stop`.)"""
        from lanex_operator.local.actions import stop_local

        return stop_local(self.path, name)

    def delete(self, name: str) -> str:
        """Delete an experiment that is not running, applying its retention (its volume and snapshots stay
        unless its spec says Delete); what was kept and removed, in one line. `LocalRunError` while it runs."""
        from lanex_operator.local.actions import delete_local

        return delete_local(self.path, name)

    # ---- reading

    def list(self) -> list[ExperimentRecord]:
        """Every experiment of the workspace (a sweep's trials included), by name."""
        return [ExperimentRecord.from_workspace(d) for d in local_experiments(self.path)]

    def get(self, name: str) -> ExperimentRecord:
        """One experiment; `LocalRunError` when the workspace has none of that name."""
        (document,) = local_experiments(self.path, name)
        return ExperimentRecord.from_workspace(document)

    def watch(self, name: Optional[str] = None, *, interval: float = POLL_SECONDS) -> Iterator[ExperimentRecord]:
        """Each experiment's record (or `name`'s) now and every time it changes, until every one shown
        has finished or its run has stopped (what `lanex get --workspace -w` prints)."""
        shown: dict[str, dict[str, Any]] = {}
        while True:
            records = [ExperimentRecord.from_workspace(d) for d in local_experiments(self.path, name)]
            for record in records:
                if shown.get(record.name) != record.document:
                    shown[record.name] = record.document
                    yield record
            if records and all(r.finished or r.running is False for r in records):
                return
            time.sleep(interval)

    def results(self, name: str) -> RunResults:
        """Test metrics, per-epoch curves and the files of a run (empty metrics until it has trained)."""
        record = self.get(name)
        output_dir = record.document.get("outputDir")
        if not output_dir:
            raise LocalRunError(f"experiment {name} in workspace {self.path} has not started training")
        return RunResults.from_output_dir(name, Path(output_dir), validation_history(Path(output_dir)))

    def list_sweeps(self) -> list[SweepRecord]:
        return [SweepRecord.from_workspace(d) for d in workspace_sweeps(self.path)]

    def get_sweep(self, name: str) -> SweepRecord:
        """One sweep; `LocalRunError` when the workspace has none of that name."""
        for sweep in self.list_sweeps():
            if sweep.name == name:
                return sweep
        raise LocalRunError(f"no local sweep {name} in workspace {self.path}")

    def leaderboard(self, sweep: str) -> list[TrialRecord]:
        """A sweep's succeeded trials, best first by its objective."""
        return self.get_sweep(sweep).leaderboard()

    def compare(self, names: Sequence[str]) -> list[ComparedRun]:
        """Experiments (or a sweep: its trials) side by side: parameters, training spec, results, curves."""
        sweeps = {s.name: s for s in self.list_sweeps()}
        wanted: list[tuple[str, Optional[dict[str, Any]]]] = []
        for name in names:
            if name in sweeps:
                wanted += [(trial.name, dict(trial.parameters)) for trial in sweeps[name].trials]
            else:
                wanted.append((name, None))
        runs = []
        for name, parameters in wanted:
            try:
                record = self.get(name)
            except LocalRunError:
                if parameters is None:
                    raise
                runs.append(ComparedRun(name, "Deleted", parameters, {}, Results(), []))  # retention removed it
                continue
            state = WorkspaceLayout(self.path).experiment_dir(name) / STATE_FILE
            training = _json_file(state).get("training") or {}
            results = self.results(name) if record.document.get("outputDir") else None
            runs.append(ComparedRun(name, record.phase.value if record.phase else None, parameters, training,
                                    record.results, list(results.validation) if results else []))
        return runs

    # ---- snapshots

    def snapshots(self, experiment: Optional[str] = None) -> list[SnapshotInfo]:
        """Local snapshots, oldest first (only `experiment`'s when given)."""
        return [s for s in WorkspaceLayout(self.path).snapshots.list() if experiment is None or s.experiment == experiment]

    def restore(self, snapshot: str, to: str) -> Path:
        """Restore a snapshot into a new local volume `to` (verified file by file); its folder.

        An experiment trains on it with `dataset.existingClaim.claimName: <to>`, or names the snapshot
        itself with `dataset.fromSnapshot`. Raises `SnapshotError`.
        """
        layout = WorkspaceLayout(self.path)
        return layout.snapshots.restore(snapshot, layout.volume(to))


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunHandle:
    """A local experiment running on a thread of this process (`Workspace.start`).

    ```python
    handle = workspace.start(exp)
    for record in handle.progress():
        print(record.phase, record.progress and record.progress.summary())
    handle.wait().results.accuracy
    ```
    """

    def __init__(self, workspace: Workspace, runner: LocalRunner) -> None:
        self.workspace = workspace
        self.name = runner.name
        self._runner = runner
        self._error: Optional[BaseException] = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"lanex-run-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._runner.run()
        except BaseException as error:  # kept for wait(): a thread must not fail silently
            self._error = error

    def __repr__(self) -> str:
        return f"RunHandle({self.name!r}, {'running' if self.running else 'ended'})"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def record(self) -> ExperimentRecord:
        """The experiment's record now."""
        return self.workspace.get(self.name)

    def progress(self, interval: float = POLL_SECONDS) -> Iterator[ExperimentRecord]:
        """The record now and each time the run advances (phase, step, validation, results), ending
        with the final record once the run has ended (however it ended: `wait()` says how)."""
        shown: Optional[dict[str, Any]] = None
        while True:
            alive = self.running
            try:
                record = self.record()
            except LocalRunError:  # the run has not written its state yet
                record = None
            if record is not None and record.document != shown:
                shown = record.document
                yield record
            if not alive:
                return
            self._thread.join(interval)

    def wait(self, timeout: Optional[float] = None) -> ExperimentRecord:
        """Block until the run ends; its final record. Raises what the run raised (`LocalRunError`, ...),
        or `TimeoutError` when `timeout` seconds pass first (the run goes on)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"experiment {self.name} still running after {timeout:g}s (phase: "
                               f"{self.record().phase or '-'}); wait() again or stop() it")
        if self._error is not None and not (self._stopping and isinstance(self._error, Interrupted)):
            raise self._error
        return self.record()

    def stop(self, timeout: Optional[float] = 120) -> ExperimentRecord:
        """Stop the run: training checkpoints its step and ends, every process of the run ends; the
        record then says where it stopped. Starting the experiment again resumes there."""
        self._stopping = True
        self._runner.interrupt()
        return self.wait(timeout)
