"""The tracking journal: every record for the tracking server, written to the run's directory first.

Why it exists: a tracking server that is down, slow or restarted must never cost a record. So the
training loop only appends each record (metrics of a step, parameters, tags, an artifact to upload,
the run's end) as one JSON line to `<output_dir>/mlflow/journal.jsonl`, and a sender sends the lines
in order and moves a cursor (`cursor.json`: the last record the server took) past them. What is not
sent yet is exactly the lines after the cursor: sent on the next successful contact, at the end of
the run, by the next run in the same directory (a resume after preemption), or by
`lanex mlflow replay OUTPUT_DIR`. Sending twice is harmless (the server keeps a metric's
(key, step, timestamp, value) once, tags and artifacts are overwritten), so a crash between a send
and the cursor's update repeats a little, and loses nothing.

Records carry the time they were made (metrics' timestamps), never the time they are sent, so a
replay gives the server the same records as a live send. Paths are relative to the output directory:
a snapshot restored elsewhere replays with its own files.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

JOURNAL_DIR = "mlflow"
JOURNAL_FILE = "journal.jsonl"
CURSOR_FILE = "cursor.json"
RUN_FILE = "run.json"  # which MLflow run the journal belongs to (tracking.sender.RunFile)


def journal_dir(output_dir: Path) -> Path:
    return Path(output_dir) / JOURNAL_DIR


def write_json_atomically(path: Path, document: Any) -> None:
    """Replace `path` so that a reader (or a crash) sees the old document or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Optional[dict]:
    try:
        found = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


class Journal:
    """Append-only records with sequence numbers, and the cursor of what the server has taken.

    One writer (rank 0's training thread) appends; one reader (the sender thread) reads from the
    cursor on. The reader takes whole lines only, so it never reads a record half-written.
    """

    def __init__(self, output_dir: Path) -> None:
        self.dir = journal_dir(output_dir)
        self.path = self.dir / JOURNAL_FILE
        self.cursor_path = self.dir / CURSOR_FILE
        self._lock = threading.Lock()  # appends come from the training thread and, at the end, the caller of end()
        self._stream = None
        self.last_seq = 0

    def run_file_path(self) -> Path:
        return self.dir / RUN_FILE

    # -- writing -------------------------------------------------------------------------------
    def open(self) -> "Journal":
        """Open for appending: drop a torn last line (a crash mid-write), continue the sequence."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                with self.path.open("r+b") as handle:
                    handle.truncate(end)
        self.scan()
        self._stream = self.path.open("a", encoding="utf-8")
        return self

    def scan(self) -> "Journal":
        """Learn the last sequence number written (without opening the journal for writing)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return self
        for line in reversed(data[:data.rfind(b"\n") + 1].splitlines()):
            try:
                self.last_seq = int(json.loads(line)["seq"])
                break
            except (ValueError, KeyError, TypeError):
                continue
        return self

    def append(self, record: dict[str, Any]) -> int:
        """Write `record` as the next line (flushed: the sender, another process, may read it at once)."""
        with self._lock:
            assert self._stream is not None, "journal not open"
            self.last_seq += 1
            self._stream.write(json.dumps({"seq": self.last_seq, **record}, separators=(",", ":")) + "\n")
            self._stream.flush()
            return self.last_seq

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None

    # -- reading -------------------------------------------------------------------------------
    def sent(self) -> tuple[int, int]:
        """(last sequence number the server took, byte offset just after it)."""
        cursor = read_json(self.cursor_path) or {}
        return int(cursor.get("seq", 0)), int(cursor.get("offset", 0))

    def mark_sent(self, seq: int, offset: int) -> None:
        write_json_atomically(self.cursor_path, {"seq": seq, "offset": offset})

    def unsent(self, offset: int, limit: int) -> Iterator[tuple[dict[str, Any], int]]:
        """Up to `limit` whole records from byte `offset` on, each with the offset just after it."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            handle.seek(offset)
            taken = 0
            while taken < limit:
                line = handle.readline()
                if not line.endswith(b"\n"):
                    return  # nothing more, or a line still being written
                offset += len(line)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line an earlier crash left (open() drops it once the writer reopens)
                taken += 1
                yield record, offset

    def pending(self) -> int:
        """How many records the server has not taken yet (sequence numbers have no gaps)."""
        seq, _ = self.sent()
        return max(0, self.last_seq - seq)
