"""The background sender: journal records to the MLflow server, in order, whatever the server does.

Why it exists: training must neither wait for the tracking server nor fail with it. The sender is a
daemon thread of rank 0. It wakes when a record is journaled (or on its backoff timer), makes sure
the run exists, then sends what follows the journal's cursor in batches and moves the cursor. When
the server does not answer it keeps the records (they are in the journal already), says so ONCE per
outage as a warning, and tries again after 1, 2, 4 ... 30 seconds; when it answers again it says how
many records it caught up on. A record the server refuses for good (a parameter whose value changed)
is skipped, with one warning per kind of refusal.

The run's identity lives in `<output_dir>/mlflow/run.json` (tracking URI, experiment, run id and its
URL, the tags it was created with, its parent): a resumed training (after preemption) continues the
same MLflow run, and a run created while the previous attempt's answer was lost is found again by
its `lanex.runKey` tag instead of being created twice.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from lanex_trainer.tracking.journal import Journal, read_json, write_json_atomically
from lanex_trainer.tracking.server import SWEEP_ROLE, MlflowServer, Refused, Unreachable, link

log = logging.getLogger("lanex_trainer.tracking")

BATCH_RECORDS = 200  # records read from the journal per round: bounds the sender's memory
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
PARENT_LOOKUP_EVERY_S = 30.0
BATCH_KINDS = ("metrics", "params", "tags")  # sent together through log_batch


class RunFile:
    """`<output_dir>/mlflow/run.json`: which run this directory logs to (no secrets in it)."""

    def __init__(self, journal: Journal) -> None:
        self.path = journal.run_file_path()
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        return read_json(self.path) or {}

    def update(self, **changes: Any) -> dict[str, Any]:
        with self._lock:
            document = {**self.read(), **changes}
            write_json_atomically(self.path, document)
            return document


class Sender:
    """Sends one output directory's journal; `run()` is the thread's body, `drain()` a one-shot replay."""

    def __init__(self, journal: Journal, run_file: RunFile, output_dir: Path,
                 server_factory: Callable[[str], MlflowServer] = MlflowServer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.journal, self.run_file, self.output_dir = journal, run_file, Path(output_dir)
        self.server_factory, self.clock = server_factory, clock
        self.server: Optional[MlflowServer] = None
        self.wake = threading.Event()
        self.closing = threading.Event()
        self.outage: Optional[str] = None  # what the server last failed with, while it does not answer
        self.refusals: set[str] = set()  # kinds of refusal already warned about
        self.next_parent_lookup = 0.0
        self.parent_lookup_every_s = PARENT_LOOKUP_EVERY_S
        self.backoff_first_s, self.backoff_max_s = BACKOFF_FIRST_S, BACKOFF_MAX_S
        self.thread: Optional[threading.Thread] = None

    # -- the thread --------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="lanex-mlflow-sender", daemon=True)
        self.thread.start()

    def run(self) -> None:
        backoff = self.backoff_first_s
        while True:
            closing = self.closing.is_set()
            if self.round():
                backoff = self.backoff_first_s
                if closing and self.drained():
                    return
                if not self.drained():
                    continue  # more to send: no waiting
                self.wake.wait(timeout=self.parent_lookup_every_s if self._parent_missing() else None)
                self.wake.clear()
            else:
                if closing:
                    return  # the last try at the end failed: the records stay in the journal
                # New records do not cut an outage's wait short (that would be a try per step); the end does.
                self.closing.wait(timeout=backoff)
                backoff = min(self.backoff_max_s, backoff * 2)

    def notify(self) -> None:
        self.wake.set()

    def close(self, wait_s: float) -> bool:
        """Ask for a last try, wait at most `wait_s` for it; True when everything was sent."""
        self.closing.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=max(0.0, wait_s))
        return self.drained()

    # -- one round ----------------------------------------------------------------------------------
    def drained(self) -> bool:
        seq, _ = self.journal.sent()
        return seq >= self.journal.last_seq

    def round(self) -> bool:
        """Create the run if needed, send what is pending; False when the server did not answer."""
        try:
            run_id = self.ensure_run()
            self.resolve_parent(run_id)
            sent = self.send_pending(run_id)
        except Unreachable as error:
            self._outage(str(error))
            return False
        except Exception as error:  # a bug or a local file problem must not end the thread (or training)
            self._outage(f"{type(error).__name__}: {error}")
            return False
        if self.outage is not None:
            log.info("MLflow tracking server %s answers again: sent %d record(s) kept in %s during the outage",
                     self._uri(), sent, self.journal.path)
            self.outage = None
        return True

    def _outage(self, why: str) -> None:
        if self.outage is None:
            log.warning("MLflow tracking server %s: no answer (%s); training goes on, the records are kept in "
                        "%s and sent when it answers again (or later with `lanex mlflow replay %s`)", self._uri(), why,
                        self.journal.path, self.output_dir)
        self.outage = why

    def _uri(self) -> str:
        return str(self.run_file.read().get("trackingUri"))

    def _server(self) -> MlflowServer:
        if self.server is None:
            self.server = self.server_factory(self._uri())
        return self.server

    def ensure_run(self) -> str:
        """The run's id: from run.json, else found by its key, else created now (then written to run.json)."""
        run = self.run_file.read()
        if run.get("runId"):
            return str(run["runId"])
        server = self._server()
        experiment_id = run.get("experimentId") or server.experiment_id(run["experimentName"])
        tags = dict(run.get("tags") or {})
        if run.get("parentRunId"):
            tags["mlflow.parentRunId"] = run["parentRunId"]
        run_id = server.find_run(experiment_id, {"lanex.runKey": tags["lanex.runKey"]})
        if run_id is None:
            run_id = server.create_run(experiment_id, run.get("runName"), tags, int(run["startTime"]))
        self.run_file.update(**link(run["trackingUri"], experiment_id, run_id))
        return run_id

    def _parent_missing(self) -> bool:
        run = self.run_file.read()
        return bool(run.get("sweepUid")) and not run.get("parentRunId")

    def resolve_parent(self, run_id: str) -> None:
        """A trial started before its sweep's parent run was known: find the parent by the sweep's uid, tag it."""
        if not self._parent_missing() or self.clock() < self.next_parent_lookup:
            return
        self.next_parent_lookup = self.clock() + self.parent_lookup_every_s
        run = self.run_file.read()
        parent = self._server().find_run(str(run["experimentId"]), {"lanex.role": SWEEP_ROLE,
                                                                     "lanex.sweepUid": run["sweepUid"]})
        if parent is not None:
            self._server().set_tags(run_id, {"mlflow.parentRunId": parent})
            self.run_file.update(parentRunId=parent)

    def send_pending(self, run_id: str) -> int:
        """Send the records after the cursor, a batch at a time; the number sent."""
        total = 0
        while True:
            _, offset = self.journal.sent()
            records = list(self.journal.unsent(offset, BATCH_RECORDS))
            if not records:
                return total
            start = 0
            while start < len(records):
                end = start + 1
                if records[start][0]["kind"] in BATCH_KINDS:
                    while end < len(records) and records[end][0]["kind"] in BATCH_KINDS:
                        end += 1
                    self._send_batch(run_id, [record for record, _ in records[start:end]])
                else:
                    self._send_one(run_id, records[start][0])
                last, last_offset = records[end - 1]
                self.journal.mark_sent(int(last["seq"]), last_offset)
                total += end - start
                start = end

    def _send_batch(self, run_id: str, records: list[dict[str, Any]]) -> None:
        try:
            self._server().log_records(run_id, records)
        except Refused:
            for record in records:  # find the refused one(s); the server keeps each metric once
                self._send_one(run_id, record)

    def _send_one(self, run_id: str, record: dict[str, Any]) -> None:
        server = self._server()
        try:
            kind = record["kind"]
            if kind in BATCH_KINDS:
                server.log_records(run_id, [record])
            elif kind == "artifact":
                local = self.output_dir / record["path"]
                if not server.upload(run_id, local, record.get("artifactPath")):
                    log.info("MLflow: artifact %s is not there (any more); not uploaded", local)
            elif kind == "status":
                server.set_status(run_id, record["status"], record.get("endTime"))
            else:
                raise Refused(f"unknown journal record kind {kind!r}")
        except Refused as error:
            key = f"{record.get('kind')}:{str(error).split(':', 1)[0]}"
            if key not in self.refusals:
                self.refusals.add(key)
                log.warning("MLflow refused a %s record (%s); it is skipped (further refusals of this kind are not "
                            "reported)", record.get("kind"), error)
