"""Preemption without lost work: SIGTERM or SIGINT ends a run at a step boundary, checkpointed.

Pods are evicted, Kueue suspends jobs, spot VMs vanish, people press Ctrl-C. Each sends SIGTERM (or
SIGINT) and waits a grace period before SIGKILL. A rank that gets the signal only notes it
(:class:`StopRequest`); after every optimizer step all ranks agree in one all-reduce whether any
of them was asked to stop, so they all stop after the same step even when the signal reached one
rank only (one worker pod evicted) or reached them at different moments. Rank 0 then checkpoints
exactly that step (model, optimiser, scheduler, sampler position, RNG states, run id), records it
in ``<output_dir>/preempted.json`` and every rank exits with :data:`PREEMPTED_EXIT_CODE`; the next
start resumes there.

The grace period is the operator's `training.terminationGracePeriodSeconds`, passed to the
launcher and workers as :data:`GRACE_ENV`: `lanex launch` gives torchrun and mpirun that long
before they escalate to SIGKILL, and the worker pods' entry point (:mod:`worker_entry`) waits that
long for its ranks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NoReturn, Optional

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry" - start it again to resume.
PREEMPTED_EXIT_CODE = 75
PREEMPTED_FILE = "preempted.json"
GRACE_ENV = "LANEX_TERMINATION_GRACE_SECONDS"
# `lanex launch` sets it to 0 for its ranks: torchrun and mpirun must not take a preemption for a
# failure; the launch reads preempted.json and reports it with PREEMPTED_EXIT_CODE itself.
PREEMPTED_EXIT_ENV = "LANEX_PREEMPTED_EXIT_CODE"
# The grace period when nothing sets one (the operator's default for terminationGracePeriodSeconds too).
# Sized for the slowest case of TR-4896's setup: a VGG16-BN SCNN checkpoint with SGD momentum is
# 158 MiB (20.75 M parameters, weights + momentum in float32); on a 100 GiB Azure NetApp Files volume
# at the Standard service level (16 MiB/s per TiB: 1.6 MiB/s) writing it takes about 100 s, plus the
# step being finished and, when the signal lands at an epoch's end, one validation pass.
DEFAULT_GRACE_SECONDS = 180
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def preempted_exit_code(environ: Mapping[str, str]) -> int:
    """What `lanex train` exits with after a preemption: PREEMPTED_EXIT_CODE, or the launch's choice."""
    try:
        return int(environ.get(PREEMPTED_EXIT_ENV, PREEMPTED_EXIT_CODE))
    except ValueError:
        return PREEMPTED_EXIT_CODE


def grace_seconds(environ: Mapping[str, str]) -> int:
    """The grace period the environment announces (GRACE_ENV), else DEFAULT_GRACE_SECONDS."""
    value = environ.get(GRACE_ENV, "")
    try:
        seconds = int(value)
    except ValueError:
        return DEFAULT_GRACE_SECONDS
    return seconds if seconds > 0 else DEFAULT_GRACE_SECONDS


class StopRequest:
    """Notes SIGTERM/SIGINT instead of dying; `agreed(dist)` is the collective decision to stop.

    Only the first signal counts; later ones (torchrun forwarding what the launcher already sent,
    a second Ctrl-C) are ignored so that nothing interrupts the checkpoint being written. The
    kubelet's SIGKILL at the end of the grace period stays the last resort.
    """

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self.received_at: Optional[float] = None  # time.monotonic() of the first signal
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            self.received_at = time.monotonic()

    def agreed(self, dist) -> bool:
        """Collective (every rank, same point): True when any rank has been asked to stop."""
        import torch

        local = torch.tensor([1.0 if self.signal is not None else 0.0], dtype=torch.float64)
        stop = dist.all_reduce_sum(local).item() > 0
        if stop and self.signal is None:
            self.signal = "a peer's stop signal"  # another rank got it; this one stops with it
            self.received_at = time.monotonic()
        return stop


def ignore_stop_signals() -> None:
    """For DataLoader workers: they share their rank's process group, and a rank that is stopping
    still needs them for the rest of its step, so the group's SIGTERM/SIGINT must not end them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@dataclass(frozen=True)
class PreemptionRecord:
    """What rank 0 leaves in `<output_dir>/preempted.json`: where the run stopped and why."""

    run_id: str
    signal: str
    step: int
    steps: int
    epoch: int  # 0-based, as in the checkpoint
    checkpoint: str
    seconds_to_checkpoint: float  # from the signal to the checkpoint on disk (this rank's clock)

    def to_json(self) -> dict:
        return {"runId": self.run_id, "signal": self.signal, "step": self.step, "steps": self.steps,
                "epoch": self.epoch, "checkpoint": self.checkpoint, "secondsToCheckpoint": self.seconds_to_checkpoint}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PreemptionRecord":
        return cls(run_id=str(data["runId"]), signal=str(data["signal"]), step=int(data["step"]),
                   steps=int(data["steps"]), epoch=int(data["epoch"]), checkpoint=str(data["checkpoint"]),
                   seconds_to_checkpoint=float(data["secondsToCheckpoint"]))

    def message(self) -> str:
        return (f"preempted by {self.signal}: stopped after step {self.step} of {self.steps} and checkpointed it "
                f"({self.checkpoint}, {self.seconds_to_checkpoint:.1f} s after the signal); "
                f"the next start resumes at step {self.step}")


class Preempted(Exception):
    """The run stopped on a signal after checkpointing its last step (CLI exit PREEMPTED_EXIT_CODE)."""

    def __init__(self, record: PreemptionRecord):
        super().__init__(record.message())
        self.record = record


def write_record(output_dir: Path, record: PreemptionRecord) -> None:
    from lanex_trainer.progress import atomic_write_text

    atomic_write_text(Path(output_dir) / PREEMPTED_FILE, json.dumps(record.to_json(), indent=1) + "\n")


def read_record(output_dir: Path, run_id: Optional[str] = None) -> Optional[PreemptionRecord]:
    """The preemption record of `output_dir` (only run `run_id`'s when given); None if absent or unreadable."""
    try:
        record = PreemptionRecord.from_json(json.loads((Path(output_dir) / PREEMPTED_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if run_id is not None and record.run_id != run_id:
        return None
    return record


def exit_at_once(code: int) -> NoReturn:
    """Leave a preempted process without the interpreter's teardown (with torch and TensorBoard loaded it
    takes over a second, measured on 2 cores), once everything of the run is on disk: checkpoint and
    record written, lease released, process group destroyed. The grace period is the checkpoint's."""
    import multiprocessing

    # torch's DataLoader watches its workers with a SIGCHLD handler that raises when one is killed.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = multiprocessing.active_children()  # the DataLoader workers
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=2)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
