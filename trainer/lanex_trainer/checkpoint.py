"""Checkpoints that survive a crash at any moment.

Each checkpoint is written to a temporary file in the same directory, flushed to disk and then
renamed, so a reader sees either the old set or the complete new file. Loading walks from the
newest checkpoint back and skips (with a warning) any that cannot be read, e.g. one truncated
by a full disk or a copy interrupted outside lanex.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

_PERIODIC = re.compile(r"^checkpoint-(\d{9})\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"checkpoint-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Periodic checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _PERIODIC.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(state: dict, directory: Path, step: int, keep: int) -> Path:
    path = checkpoint_path(directory, step)
    atomic_torch_save(state, path)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(directory: Path) -> Optional[tuple[Path, dict]]:
    """The newest readable checkpoint, falling back past unreadable ones with a warning."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a torn or corrupt file: any unpickling/zip error
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, error)
            continue
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            log.warning("checkpoint %s lacks model/step entries; falling back to the previous one", path)
            continue
        return path, state
    return None
