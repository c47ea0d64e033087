"""Reading the files a run appends to while it trains: its log as a terminal would show it, and the
trainer's per-step log (`train_log.jsonl`: loss and learning rate of every optimizer step).

Both are read from a byte offset, so a page that follows a run gets only what is new, and only
complete lines: a writer's half-written last line is read on the next change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

STEP_LOG = "train_log.jsonl"  # written by lanex_trainer.train (rank 0), one JSON object per optimizer step
FIRST_READ_BYTES = 256 * 1024  # a page opened on a long run starts with the log's tail


def read_appended(path: Path, offset: int, first_read: int = FIRST_READ_BYTES) -> tuple[bytes, int]:
    """The complete lines appended to `path` since `offset` (-1: the file's tail), and the next offset.

    A file that shrank (rotated, or a run started over) is read again from its start."""
    try:
        with path.open("rb") as stream:
            size = stream.seek(0, 2)
            if offset < 0:
                offset = max(0, size - first_read)
            elif offset > size:
                offset = 0
            stream.seek(offset)
            data = stream.read(size - offset)
    except (FileNotFoundError, NotADirectoryError):
        return b"", max(offset, 0)
    end = data.rfind(b"\n") + 1
    return data[:end], offset + end


@dataclass
class TerminalText:
    """A log as lines of text, the way a terminal ends up showing them.

    The trainer's `LANEX_PROGRESS {...}` records are dropped (the page shows them as numbers and
    curves; `runner.ProgressLineFilter` is the same filter the terminal of `lanex run` uses), and a
    progress bar redrawn with carriage returns shows only its last drawing.
    """

    filter: Any = field(default=None)

    def __post_init__(self) -> None:
        from lanex_operator.local.runner import ProgressLineFilter

        self.filter = self.filter or ProgressLineFilter()

    def lines(self, chunk: bytes) -> list[str]:
        text = self.filter.feed(chunk).decode("utf-8", errors="replace")
        shown = []
        for line in text.split("\n"):
            drawings = [part for part in line.split("\r") if part.strip()]
            if drawings:
                shown.append(drawings[-1].rstrip())
        return shown


def read_steps(output_dir: Optional[Path], offset: int = 0) -> tuple[list[list[float]], int]:
    """`[step, loss, lr]` of every optimizer step logged since `offset`, and the next offset.

    A resumed run logs the steps after its checkpoint again: the page keeps the newest value of a step."""
    if output_dir is None:
        return [], offset
    data, offset = read_appended(output_dir / STEP_LOG, offset, first_read=1 << 62)
    points = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
            points.append([int(record["step"]), float(record["loss"]), float(record["lr"])])
        except (ValueError, KeyError, TypeError):
            continue  # a torn or foreign line: the curve skips it
    return points, offset
