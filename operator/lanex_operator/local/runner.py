"""`lanex run`: a LaneExperiment on this machine, through the same plan as on the cluster.

The experiment's volume is a directory of the workspace; each step of the plan runs as local
processes with that directory standing in for `/mnt`: the prepare step's script, then
`lanex launch` (torchrun or horovodrun on localhost) for training, then a local snapshot.
Progress is recorded in `<workspace>/experiments/<name>/state.json` after every step, so
running the same file again continues from the first unfinished step (training itself resumes
from its newest checkpoint) and never redoes or overwrites finished work. While training, the
terminal shows the trainer's progress bar; its `LANEX_PROGRESS` lines go to the step's log only,
and `local_experiments` reads state.json with the trainer's progress.json (both replaced
atomically, never locked) for `lanex get --workspace` in another terminal.

With `tracking.mlflow` the trainer logs the run to MLflow itself (lanex_trainer.tracking); the runner
gives the training processes the keys of `credentialsSecretRef` (from `--secret`) as MLflow's environment
variables, tags the run with its result snapshot, and sends what the trainer could not (`lanex mlflow
replay`): a server that is down never fails the run.

One writer per experiment: a run holds an exclusive lock on `<experiment>/run.lock` (the kernel
drops it when the runner ends, however), and every process of a step ends with the runner, even
when it is SIGKILLed (lanex_trainer.lifeline), so a rerun never meets the trainers of the last one.

Ctrl-C (or SIGTERM) while a step runs is passed on to the step's processes, which run in a session
of their own so that they get it once, from the runner: training finishes its step, checkpoints it
and stops (lanex_trainer.preemption), and the runner waits for that before it ends, saying at which
step the next run resumes. A second Ctrl-C stops everything at once.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from lanex_operator.api.models import MLFLOW_CREDENTIAL_KEYS, LaneExperimentSpec
from lanex_operator.local import secrets as local_secrets
from lanex_operator.local.secrets import SecretSource, SecretSourceError
from lanex_operator.local.snapshots import SnapshotError, SnapshotStore
from lanex_operator.plan.steps import ExperimentPlan, StepName, TrackingContext, plan_for, secret_names, tracking_secret
from lanex_trainer import lifeline
from lanex_trainer.preemption import PREEMPTED_EXIT_CODE, read_record
from lanex_trainer.progress import MARKER, PROGRESS_FILE, read_progress
from lanex_trainer.tracking import add_tags, run_link

LOCAL_NAMESPACE = "local"
STATE_FILE = "state.json"
LOCK_FILE = "run.lock"
FINAL_PHASES = ("Succeeded", "Failed")


class LocalRunError(RuntimeError):
    """A step failed or cannot start; the message names the step and what to do."""


class ExperimentBusy(LocalRunError):
    """Another `lanex run` of the same experiment is running (CLI exit 2)."""


class Interrupted(LocalRunError):
    """Ctrl-C or SIGTERM stopped the run; running it again resumes (CLI exit 130)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _show(data: bytes, decoder: codecs.IncrementalDecoder, final: bool = False) -> None:
    """A step's output on this process's stdout: bytes as they came on a terminal, text where stdout has no
    byte stream (a notebook's kernel; `decoder` keeps a character split between two chunks whole)."""
    stream = getattr(sys.stdout, "buffer", None)
    if stream is not None:
        stream.write(data)
    else:
        sys.stdout.write(decoder.decode(data, final))
    sys.stdout.flush()


@dataclass
class Workspace:
    """Layout of the local workspace (default `./.lanex`)."""

    root: Path

    def volume(self, claim: str) -> Path:
        return self.root / "volumes" / claim

    def experiment_dir(self, name: str) -> Path:
        return self.root / "experiments" / name

    @property
    def snapshots(self) -> SnapshotStore:
        return SnapshotStore(self.root / "snapshots")


@dataclass
class RunState:
    """What has happened to one local experiment; persisted after every change."""

    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, config_hash: str, dataset_source: str) -> "RunState":
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("configHash") != config_hash or data.get("datasetSource") != dataset_source:
                raise LocalRunError(
                    f"experiment state {path} was made by a different spec (training config or dataset changed); "
                    "give the experiment a new metadata.name, or delete that directory to start over"
                )
            return cls(path, data)
        return cls(path, {"phase": "Pending", "configHash": config_hash, "datasetSource": dataset_source,
                          "steps": {}, "startTime": _now()})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.data, indent=2))
        os.replace(temp, self.path)

    def done(self, step: StepName) -> bool:
        return self.data["steps"].get(step.value, {}).get("state") == "Done"

    def mark(self, step: StepName, state: str, **details) -> None:
        entry = self.data["steps"].setdefault(step.value, {})
        entry.update(state=state, time=_now(), **details)
        self.save()


PHASE_OF_STEP = {
    StepName.DATASET: "ProvisioningDataset", StepName.PREPARE: "Downloading", StepName.SHARE: "SharingVolume",
    StepName.TRAIN: "Training", StepName.SNAPSHOT: "Snapshotting",
}


class LocalRunner:
    """One local experiment. `quiet`: step output goes to the step logs only (a sweep runs several at once,
    each in its own process group so that `stop` ends the whole tree); `experiment_dir`: where its state
    and logs live (default `<workspace>/experiments/<name>`)."""

    def __init__(self, name: str, spec: LaneExperimentSpec, workspace: Path, echo: Callable[[str], None] = print,
                 python_bin: Optional[Path] = None, secrets: Optional[dict[str, SecretSource]] = None,
                 quiet: bool = False, experiment_dir: Optional[Path] = None,
                 context: TrackingContext = TrackingContext()):
        self.name, self.spec, self.echo = name, spec, echo
        self.quiet = quiet
        self.stopped: Optional[str] = None  # why `stop` was called (the run then ends in phase Stopped)
        self.interrupted = False  # `interrupt` was called: the run fails and the next one resumes
        self._process: Optional[subprocess.Popen] = None
        self.workspace = Workspace(workspace.resolve())
        claim = plan_for(name, LOCAL_NAMESPACE, spec).names.dataset_claim
        self.volume = self.workspace.volume(claim)
        self.exp_dir = experiment_dir or self.workspace.experiment_dir(name)
        # The secretRefs' folders exist only while the prepare step runs (see local.secrets).
        self.secrets_dir = self.exp_dir / "secrets"
        self.secrets = dict(secrets or {})
        self.plan: ExperimentPlan = plan_for(
            name, LOCAL_NAMESPACE, spec, mount_root=str(self.volume), termination_log=str(self.exp_dir / "termination-log"),
            secrets_root=str(self.secrets_dir), context=context,
        )
        self.state = RunState.load(self.exp_dir / STATE_FILE, self.plan.config_hash, self.plan.dataset_source)
        self.bin_dir = python_bin or Path(sys.executable).parent
        missing = [secret for secret in secret_names(spec) if secret not in self.secrets]
        if missing and self.plan.prepare is not None and not self.state.done(StepName.PREPARE):
            options = " ".join(f"--secret {secret}=file:PATH" for secret in missing)
            raise LocalRunError(f"the spec's secretRef names {', '.join(missing)}: pass {options} (or =env:VAR)")
        tracking = tracking_secret(spec)
        if tracking is not None and tracking not in self.secrets and not self.state.done(StepName.TRAIN):
            raise LocalRunError(f"spec.tracking.mlflow.credentialsSecretRef names {tracking}: pass --secret "
                                f"{tracking}=file:PATH (or =env:VAR) with its keys {', '.join(MLFLOW_CREDENTIAL_KEYS)}")

    # -- process environment --------------------------------------------------------------------
    def _env(self, extra: dict[str, str], processes: int = 1) -> dict[str, str]:
        env = {**os.environ, **extra}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        # Share the machine's cores between the training processes instead of oversubscribing.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        env[lifeline.ENV_FLAG] = "1"  # the `lanex` commands of a step end with this runner
        return env

    def _run(self, step: StepName, argv: list[str], env: dict[str, str], log_name: str) -> None:
        """Run one step's process tree, its output both on the terminal and in the step's log."""
        log_path = self.exp_dir / "logs" / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.interrupted or self.stopped:  # asked to stop between two steps: start no new one
            raise Interrupted(f"interrupted before step {step.value}; run it again to resume")
        with log_path.open("ab") as log:
            log.write(f"\n=== {_now()} {' '.join(argv)[:500]}\n".encode())
            # A session of its own: a terminal's Ctrl-C reaches the step once, passed on by `_forward`.
            process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       preexec_fn=lifeline.preexec_die_with_parent(), start_new_session=True)
            self._process = process
            if self.interrupted or self.stopped:  # asked while the process was being started
                self._kill()
            previous = self._forward_stop_signals(process)
            try:
                assert process.stdout is not None
                terminal = ProgressLineFilter()
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                for chunk in iter(lambda: process.stdout.read1(4096), b""):
                    log.write(chunk)
                    if not self.quiet:
                        _show(terminal.feed(chunk), decoder)
                if not self.quiet:
                    _show(terminal.flush(), decoder, final=True)
                code = process.wait()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                self._process = None
        if self.interrupted:
            raise Interrupted(self._interruption(step, code))
        if code != 0:
            raise LocalRunError(f"step {step.value} failed (exit code {code}); its log is {log_path}")

    def _forward_stop_signals(self, process: subprocess.Popen) -> dict:
        """While `process` runs: SIGINT/SIGTERM to this runner go to its process group (main thread only)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}  # a sweep's trial: the sweep stops it with `interrupt`

        def forward(signum, _frame) -> None:
            self.interrupted = True
            try:
                os.killpg(process.pid, signum)  # `lanex launch` takes a second Ctrl-C as "stop at once"
            except ProcessLookupError:
                pass

        return {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}

    def _interruption(self, step: StepName, code: int) -> str:
        """What the interrupted step left behind, for the user and state.json."""
        if step is StepName.TRAIN:
            record = read_record(Path(self.plan.paths.output_dir))
            if code == PREEMPTED_EXIT_CODE and record is not None:
                return (f"interrupted: training stopped after step {record.step} of {record.steps} and checkpointed "
                        f"it; run it again to resume at step {record.step}")
            return "interrupted: training stopped; run it again to resume from its newest checkpoint"
        return f"interrupted during step {step.value}; run it again to resume"

    # -- steps --------------------------------------------------------------------------------
    def _dataset(self) -> dict:
        step = self.plan.dataset
        if step.restore_from:
            if not self.volume.exists():
                self.workspace.snapshots.restore(step.restore_from, self.volume)
            return {"volume": str(self.volume), "restoredFrom": step.restore_from}
        if not step.creates_claim and not self.volume.is_dir():
            raise LocalRunError(
                f"spec.dataset.existingClaim.claimName: no local volume {self.volume}; "
                f"create it or restore a snapshot there with `lanex snapshots restore NAME --to {step.claim_name}`"
            )
        self.volume.mkdir(parents=True, exist_ok=True)
        return {"volume": str(self.volume)}

    def _prepare(self) -> dict:
        prepare = self.plan.prepare
        assert prepare is not None
        try:
            local_secrets.materialise(self.secrets, secret_names(self.spec), self.secrets_dir)
            self._run(StepName.PREPARE, list(prepare.container.command), self._env(prepare.container.env_dict()),
                      "prepare.log")
        except SecretSourceError as error:
            raise LocalRunError(f"step prepare: {error}") from None
        finally:
            local_secrets.remove(self.secrets_dir)
        return {}

    def _secret_env(self) -> dict[str, str]:
        """The launcher's variables from Secret keys (MLflow's credentials), read from `--secret` now; never logged."""
        try:
            return local_secrets.secret_env(self.plan.train.launcher.secret_env, self.secrets)
        except SecretSourceError as error:
            raise LocalRunError(f"step train: {error}") from None

    def _train(self) -> dict:
        train = self.plan.train
        # No MPI hostfile here: `lanex launch` picks torchrun (or horovodrun) on localhost.
        argv = list(train.launcher.command)
        env = self._env({**train.launcher.env_dict(), **self._secret_env()}, processes=train.processes)
        env.setdefault("MASTER_PORT", str(_free_port()))  # several local experiments may train at once
        self._run(StepName.TRAIN, argv, env, "train.log")
        results_file = Path(self.plan.paths.output_dir) / "results.json"
        if not results_file.is_file():
            raise LocalRunError(f"step train finished without writing {results_file}")
        results = json.loads(results_file.read_text())
        return {"results": {k: results.get(k) for k in ("accuracy", "fp", "fn", "checkpoint", "images_per_second", "epochs")}}

    def _send_mlflow(self, tags: dict[str, str]) -> None:
        """Tag the experiment's MLflow run and send what the trainer could not (best effort: a server that does
        not answer keeps the records in the run's mlflow/ folder for `lanex mlflow replay`)."""
        output = Path(self.plan.paths.output_dir)
        if self.spec.tracking is None or self.spec.tracking.mlflow is None or not (output / "mlflow").is_dir():
            return
        if tags:
            add_tags(output, tags)
        argv = [str(self.bin_dir / "lanex"), "mlflow", "replay", str(output)]
        log_path = self.exp_dir / "logs" / "train.log"
        with log_path.open("ab") as log:
            done = subprocess.run(argv, env=self._env(self._secret_env()), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=600)
        if done.returncode != 0:
            self.echo(f"[lanex] warning: MLflow: not everything was sent; `lanex mlflow replay {output}` sends the "
                      f"rest (see {log_path})")

    def stop(self, reason: str) -> None:
        """End the running step's whole process tree; the run ends in phase Stopped with `reason` (thread-safe)."""
        self.stopped = reason
        self._kill()

    def interrupt(self) -> None:
        """End the running step's process tree; the run fails, and running it again resumes (thread-safe)."""
        self.interrupted = True
        self._kill()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM) if self.quiet else process.terminate()
            except ProcessLookupError:
                pass

    def _snapshot(self) -> dict:
        name = self.plan.names.snapshot(datetime.now(timezone.utc))
        # A volume cloned from a snapshot shares that snapshot's files until they change: link them again.
        info = self.workspace.snapshots.create(self.volume, name, experiment=self.name,
                                               base=self.plan.dataset.restore_from)
        self._send_mlflow({"lanex.resultSnapshot": info.name})
        return {"snapshot": info.name, "files": info.files, "bytes": info.bytes}

    # -- the run ------------------------------------------------------------------------------
    def _lock(self):
        """Hold the experiment's lock for this process's lifetime; ExperimentBusy names the holder."""
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.exp_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ExperimentBusy(f"experiment {self.name} is already being run by {holder}; wait for it to end "
                                 f"or stop it, then run it again (it continues where it stopped)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"lanex run (pid {os.getpid()} on {socket.gethostname()}, since {_now()})\n")
        handle.flush()
        return handle

    def run(self, steps: Optional[set[StepName]] = None) -> dict:
        """Run every unfinished step (only those in `steps` when given: phase Prepared after them)."""
        lock = self._lock()  # also released if this process is killed: the kernel drops flocks
        try:
            # As the last holder of the lock left it (it may have finished steps since __init__).
            self.state = RunState.load(self.state.path, self.plan.config_hash, self.plan.dataset_source)
            return self._run_steps(steps)
        finally:
            lock.close()

    def _run_steps(self, steps: Optional[set[StepName]] = None) -> dict:
        started = time.monotonic()
        actions = {StepName.DATASET: self._dataset, StepName.PREPARE: self._prepare, StepName.SHARE: lambda: {"note": "local directories are shared by all processes"},
                   StepName.TRAIN: self._train, StepName.SNAPSHOT: self._snapshot}
        if self.plan.train.from_scratch is not None and not self.state.done(StepName.TRAIN):
            self.echo(f"[lanex] warning: TrainingFromScratch: {self.plan.train.from_scratch}")
        self.state.data["outputDir"] = self.plan.paths.output_dir  # where `lanex get --workspace` finds progress
        # The training spec, for `lanex compare` (the config hash alone does not say what differs).
        self.state.data.setdefault("training", self.spec.training.model_dump(mode="json", by_alias=True))
        # What deleting it keeps (`lanex delete NAME --workspace`, local.actions), and whether its volume is its own.
        self.state.data["retention"] = self.spec.retention.model_dump(mode="json", by_alias=True)
        self.state.data["ownsVolume"] = self.plan.dataset.creates_claim
        # Lets `lanex get --workspace` tell a run that is going on from one that was killed or interrupted.
        self.state.data["runner"] = {"pid": os.getpid(), "host": socket.gethostname()}
        try:
            for step in self.plan.steps:
                if steps is not None and step not in steps:
                    continue
                if self.state.done(step):
                    self.echo(f"[lanex] {step.value}: already done, skipping")
                    continue
                self.state.data["phase"] = PHASE_OF_STEP[step]
                self.state.mark(step, "Running")
                self.echo(f"[lanex] {step.value}: running")
                details = actions[step]()
                self.state.mark(step, "Done", **details)
                if "results" in details:
                    self.state.data["results"] = details["results"]
                if "snapshot" in details:
                    self.state.data.setdefault("snapshots", []).append(details["snapshot"])
            if steps is None and StepName.SNAPSHOT not in self.plan.steps:
                self._send_mlflow({})  # with a snapshot, the snapshot step sends it with the snapshot's tag
            link = run_link(Path(self.plan.paths.output_dir))
            if link is not None:  # the experiment's MLflow run, for the UI's link (state.json is its record)
                self.state.data["mlflow"] = link
            self.state.data["phase"] = "Succeeded" if steps is None else "Prepared"
        except (LocalRunError, SnapshotError) as error:
            if self.stopped:
                self.state.data.update(phase="Stopped", reason="EarlyStopped", message=self.stopped,
                                       completionTime=_now())
                self.state.save()
                return self.summary()
            interrupted = self.interrupted
            message = str(error) if isinstance(error, Interrupted) or not interrupted else "interrupted; run it again to resume"
            self.state.data.update(phase="Failed", message=message)
            self.state.save()
            raise (Interrupted if interrupted else LocalRunError)(message) from error
        self.state.data["completionTime"] = _now()
        self.state.data["seconds"] = self.state.data.get("seconds", 0) + round(time.monotonic() - started, 1)
        self.state.save()
        return self.summary()

    def summary(self) -> dict:
        data = self.state.data
        results = data.get("results") or {}
        output = Path(self.plan.paths.output_dir)
        return {
            "name": self.name, "phase": data["phase"], "workers": self.plan.train.processes,
            "accuracy": results.get("accuracy"), "fp": results.get("fp"), "fn": results.get("fn"),
            "snapshot": (data.get("snapshots") or [None])[-1], "seconds": data.get("seconds"),
            "results": str(output / "results.json"), "curves": str(output / "curves.png"),
            "overlays": str(output / "overlays"), "worst": str(output / "worst.png"),
            "checkpoint": results.get("checkpoint"), "mlflow": run_link(output),
        }


class ProgressLineFilter:
    """Drops `LANEX_PROGRESS {...}` lines from a byte stream and passes everything else on at once.

    The trainer's progress bar redraws with carriage returns and no newline, so output cannot wait
    for line ends; only a tail that may be the start of the marker is held back until it is decided.
    """

    marker = MARKER.encode()

    def __init__(self) -> None:
        self.held = b""
        self.dropping = False  # inside a progress line, until its newline

    def feed(self, chunk: bytes) -> bytes:
        data, self.held, shown = self.held + chunk, b"", bytearray()
        while data:
            if self.dropping:
                end = data.find(b"\n")
                if end < 0:
                    return bytes(shown)
                data, self.dropping = data[end + 1:], False
                continue
            start = data.find(self.marker)
            if start >= 0:
                shown += data[:start]
                data, self.dropping = data[start:], True
                continue
            keep = self._partial_marker(data)
            shown += data[:len(data) - keep]
            self.held = data[len(data) - keep:]
            break
        return bytes(shown)

    def flush(self) -> bytes:
        rest, self.held = (b"" if self.dropping else self.held), b""
        return rest

    def _partial_marker(self, data: bytes) -> int:
        """Length of the longest tail of `data` that begins the marker."""
        for size in range(min(len(self.marker) - 1, len(data)), 0, -1):
            if self.marker.startswith(data[-size:]):
                return size
        return 0


def runner_alive(state: dict) -> Optional[bool]:
    """Whether the `lanex run` that last wrote this state is still going; None when it cannot be told
    (a state from an older lanex, or a run on another host sharing the workspace)."""
    if state.get("phase") in FINAL_PHASES:
        return False
    runner = state.get("runner") or {}
    if not runner.get("pid") or runner.get("host") != socket.gethostname():
        return None
    try:
        os.kill(runner["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        return True
    return True


def local_experiments(workspace: Path, name: Optional[str] = None) -> list[dict]:
    """The experiments of a workspace as `lanex get --workspace -o json` shows them (PROGRESS_CONTRACT.md).

    Reads each state.json and the trainer's progress.json without locking: both are replaced
    atomically, so a run in another terminal is never disturbed and never seen half-written.
    """
    root = Workspace(workspace.resolve()).root / "experiments"
    names = [name] if name else sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    found = []
    for experiment in names:
        try:
            state = json.loads((root / experiment / STATE_FILE).read_text())
        except FileNotFoundError:
            if name:
                raise LocalRunError(f"no local experiment {name} in workspace {workspace}") from None
            continue
        except json.JSONDecodeError as error:
            raise LocalRunError(f"{root / experiment / STATE_FILE}: not valid JSON ({error})") from error
        output_dir = state.get("outputDir")
        results = state.get("results") or {}
        found.append({
            "name": experiment, "phase": state.get("phase"), "running": runner_alive(state),
            "progress": read_progress(Path(output_dir)) if output_dir else None,
            "results": {key: results.get(key) for key in ("accuracy", "fp", "fn")},
            "snapshot": (state.get("snapshots") or [None])[-1],
            "startTime": state.get("startTime"), "completionTime": state.get("completionTime"),
            "message": state.get("message"), "seconds": state.get("seconds"), "outputDir": output_dir,
            "progressFile": str(Path(output_dir) / PROGRESS_FILE) if output_dir else None,
            # {"runId", "experimentId", "url"} of its MLflow run (spec.tracking.mlflow), once created; else None
            "mlflow": run_link(Path(output_dir)) if output_dir else None,
        })
    return found
