"""Checkpoints that survive a crash at any moment.

Each checkpoint is written to a temporary file in the same directory, flushed to disk and then
renamed, so a reader sees either the old set or the complete new file. Loading walks from the
newest checkpoint back and skips (with a warning) any that cannot be read, e.g. one truncated
by a full disk or a copy interrupted outside lanex.

A checkpoint is data, never code: checkpoints live on shared volumes and in restored snapshots,
where anyone with write access could plant a file, and a pickle can run any code it names. Every
read goes through :func:`load_checkpoint`, i.e. ``torch.load(weights_only=True)`` (tensors and
plain containers only) plus an explicit allowlist of the few other types lanex itself writes. A
file that needs anything else is refused (:class:`UnsafeCheckpointError`, naming the file and the
globals it asks for) before any of it is built; resume skips it like a torn one.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

_PERIODIC = re.compile(r"^checkpoint-(\d{9})\.pt$")


# What lanex writes beyond tensors and plain Python values (dict, list, tuple, str, int, float,
# bool, None: config dumps, history, run ids, optimizer and scheduler state): numpy's RNG state in
# the "rng" entry, a uint32 ndarray inside a tuple. Nothing else is ever allowed.
SAFE_GLOBALS: tuple = (np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that needs code outside the allowlist to be read; it is never executed."""


def load_checkpoint(path: Path) -> Any:
    """Read a checkpoint as data onto the CPU (weights_only, allowlist :data:`SAFE_GLOBALS`).

    Raises :class:`UnsafeCheckpointError` naming the file and the globals it references when it
    needs anything else; other read errors (missing, torn, not a torch file) propagate as torch
    raises them.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise
        raise UnsafeCheckpointError(
            f"checkpoint {path} was refused: it needs {_unsafe_globals(path)} to be loaded, which lanex never "
            "writes; it is not a lanex checkpoint (or was tampered with) and was not executed"
        ) from None


def _unsafe_globals(path: Path) -> str:
    """The globals outside the allowlist that a checkpoint references (read without unpickling)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    try:
        found = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]
    except Exception:  # a legacy (non-zip) file cannot be scanned; the refusal itself stands
        return "globals outside lanex's allowlist"
    return ", ".join(found) if found else "globals outside lanex's allowlist"


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
        match = _PERIODIC.fullmatch(path.name)
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
            state = load_checkpoint(path)
        except UnsafeCheckpointError as error:
            log.warning("%s; falling back to the previous one", error)
            continue
        except Exception as error:  # a torn or corrupt file: any unpickling/zip error
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, error)
            continue
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            log.warning("checkpoint %s lacks model/step entries; falling back to the previous one", path)
            continue
        return path, state
    return None
