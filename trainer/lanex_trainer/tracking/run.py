"""What the training loop calls to log its run to MLflow: `RunTracker`, rank 0's only.

Why it exists: the trainer states what happened (parameters, a step's loss, an epoch's validation, the
test results, the files worth keeping, how the run ended) and nothing else: every call only appends
to the journal (`tracking.journal`) and wakes the sender (`tracking.sender`), so it costs a line
written to a local file whether the server is up, down or slow.

A resumed run (the same output directory, e.g. after preemption) continues the MLflow run recorded in
`mlflow/run.json`; its parameters are logged once, by the run that created it. A run whose tracking
server or experiment changed starts a new MLflow run and keeps the old journal aside (`mlflow-<time>/`).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from lanex_trainer.config import MlflowConfig
from lanex_trainer.tracking.journal import Journal, journal_dir
from lanex_trainer.tracking.sender import RunFile, Sender
from lanex_trainer.tracking.server import MlflowServer

log = logging.getLogger("lanex_trainer.tracking")

FINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


def _now_ms() -> int:
    return int(time.time() * 1000)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow parameters: `a.b` keys, values as text (None as the empty string, lists as JSON)."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params.update(flat_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            params[name] = json.dumps(value, sort_keys=True)
        else:
            params[name] = "" if value is None else str(value)
    return params


class RunTracker:
    """One training run's MLflow record; every method returns at once."""

    def __init__(self, settings: MlflowConfig, output_dir: Path,
                 server_factory: Callable[[str], MlflowServer] = MlflowServer) -> None:
        self.settings, self.output_dir = settings, Path(output_dir)
        self.journal = Journal(self.output_dir)
        self.run_file = RunFile(self.journal)
        self.sender = Sender(self.journal, self.run_file, self.output_dir, server_factory)
        self.ended = False

    # -- start and end -----------------------------------------------------------------------------
    def start(self, params: Mapping[str, Any], resumed_at: Optional[int] = None, fresh: bool = False) -> None:
        """Open the run, or continue the directory's (unless `fresh`: training starts over there); `params` are
        logged only by the run that creates it."""
        settings = self.settings
        previous = self.run_file.read()
        moved = (previous.get("trackingUri"), previous.get("experimentName")) != (settings.tracking_uri,
                                                                                settings.experiment_name)
        if previous and (fresh or moved):
            aside = self.output_dir / f"mlflow-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}"
            why = (f"logged to {previous.get('trackingUri')} (experiment {previous.get('experimentName')!r}) before"
                   if moved else "is trained again from the start")
            log.warning("MLflow: this output directory %s: this run is a new MLflow run; the previous one's record is "
                        "kept in %s", why, aside)
            shutil.move(str(journal_dir(self.output_dir)), str(aside))
            previous = {}
        self.journal.open()
        if previous:
            log.info("MLflow: continuing run %s (%s)", previous.get("runId") or "(not created yet)",
                     previous.get("url") or settings.tracking_uri)
            self.journal.append({"kind": "status", "status": "RUNNING"})
            if resumed_at is not None:
                self.journal.append({"kind": "tags", "values": {"lanex.resumedAtStep": str(resumed_at)}})
        else:
            tags = {**settings.tags, "lanex.runKey": secrets.token_hex(8)}
            self.run_file.update(trackingUri=settings.tracking_uri, experimentName=settings.experiment_name,
                                 runName=settings.run_name, tags=tags, startTime=_now_ms(),
                                 parentRunId=settings.parent_run_id, sweepUid=settings.sweep_uid)
            self.journal.append({"kind": "params", "values": flat_params(params)})
            log.info("MLflow: logging this run to %s, experiment %r", settings.tracking_uri, settings.experiment_name)
        self.sender.start()
        self.sender.notify()

    def end(self, status: str, wait_s: Optional[float] = None) -> bool:
        """Record how the run ended and give the sender a bounded last chance; True when all was sent."""
        assert status in FINAL_STATUSES, status
        self.ended = True
        self.journal.append({"kind": "status", "status": status, "endTime": _now_ms()})
        done = self.sender.close(self.settings.flush_timeout_s if wait_s is None else wait_s)
        self.journal.close()
        if not done:
            log.warning("MLflow: %d record(s) not sent yet are kept in %s; `lanex mlflow replay %s` sends them",
                        self.journal.pending(), self.journal.path, self.output_dir)
        return done

    # -- what happened -------------------------------------------------------------------------------
    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self._record({"kind": "metrics", "step": int(step), "timestamp": _now_ms(),
                      "values": {key: float(value) for key, value in values.items() if value is not None}})

    def tags(self, values: Mapping[str, Any]) -> None:
        self._record({"kind": "tags", "values": {key: str(value) for key, value in values.items()}})

    def artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        """Upload `path` (a file or folder inside the output directory) under `artifact_path`."""
        relative = Path(path).resolve().relative_to(self.output_dir.resolve())
        self._record({"kind": "artifact", "path": relative.as_posix(), "artifactPath": artifact_path})

    def _record(self, record: dict[str, Any]) -> None:
        self.journal.append(record)
        self.sender.notify()

    def link(self) -> Optional[dict[str, str]]:
        """`{"runId", "experimentId", "url"}` once the run exists on the server, else None."""
        return run_link(self.output_dir)


def run_link(output_dir: Path) -> Optional[dict[str, str]]:
    """The MLflow run an output directory logs to, as `lanex get` shows it (None: no such run yet)."""
    run = RunFile(Journal(Path(output_dir))).read()
    if not run.get("runId"):
        return None
    return {key: str(run[key]) for key in ("runId", "experimentId", "url") if run.get(key)}


def add_tags(output_dir: Path, tags: Mapping[str, Any]) -> None:
    """Journal tags for an output directory's run after training ended (e.g. its result snapshot); `replay`
    sends them."""
    journal = Journal(Path(output_dir)).open()
    try:
        journal.append({"kind": "tags", "values": {key: str(value) for key, value in tags.items()}})
    finally:
        journal.close()


def replay(output_dir: Path, server_factory: Callable[[str], MlflowServer] = MlflowServer) -> tuple[bool, int]:
    """Send what an output directory's journal holds and the server has not taken yet, once, now.

    Returns (everything sent, records still pending). Raises FileNotFoundError when the directory never
    logged to MLflow."""
    journal = Journal(Path(output_dir))
    if not journal.run_file_path().is_file():
        raise FileNotFoundError(f"{journal.dir}: this output directory has no MLflow run (no {journal.run_file_path().name})")
    journal.scan()
    sender = Sender(journal, RunFile(journal), Path(output_dir), server_factory)
    done = sender.round() and sender.drained()
    return done, journal.pending()
