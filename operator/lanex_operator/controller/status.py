"""The status of one LaneExperiment as the reconciler edits it during one pass.

Why it exists: every step reports through the same few moves (enter a phase, set a condition, fail,
succeed) and each move must also produce a Kubernetes Event and a step duration. `StatusBook`
keeps a working copy of `status`, records which top-level keys changed (the merge patch to send)
and the Events to post once the patch is written, so a pass writes status at most once per step.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from lanex_operator.api.models import ConditionType, FailureReason, Phase

MESSAGE_LIMIT = 1024  # characters of an Event or condition message the operator writes


def clip(text: str) -> str:
    """`text` cut to MESSAGE_LIMIT characters, ending in '...' when it was cut."""
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."

TERMINAL_PHASES = (Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.STOPPED.value)
MOVE_IN_PROGRESS = "InProgress"  # result of a `status.storageMoves[]` entry written before the move is made

# Which condition reports the step that runs in each phase.
STEP_CONDITIONS: dict[str, str] = {
    Phase.PENDING.value: ConditionType.PREFLIGHT.value,
    Phase.PROVISIONING_DATASET.value: ConditionType.DATASET_READY.value,
    Phase.DOWNLOADING.value: ConditionType.DATA_PREPARED.value,
    Phase.SHARING_VOLUME.value: ConditionType.VOLUME_SHARED.value,
    Phase.TRAINING.value: ConditionType.TRAINED.value,
    Phase.SNAPSHOTTING.value: ConditionType.SNAPSHOTTED.value,
}


def utc_text(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class PendingEvent:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class StepTiming:
    step: str
    outcome: str
    seconds: float


class StatusBook:
    """A working copy of `status` plus the changes, Events and step timings of the current pass."""

    def __init__(self, status: Mapping[str, Any] | None, generation: int,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.data: dict[str, Any] = copy.deepcopy(dict(status or {}))
        self.generation = generation
        self._now = now
        self.changed: set[str] = set()
        self.events: list[PendingEvent] = []
        self.timings: list[StepTiming] = []

    # ---- reading

    @property
    def phase(self) -> str | None:
        return self.data.get("phase")

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def condition(self, type_: str) -> dict[str, Any] | None:
        for condition in self.data.get("conditions") or []:
            if condition.get("type") == type_:
                return condition
        return None

    def is_true(self, type_: str) -> bool:
        condition = self.condition(type_)
        return condition is not None and condition.get("status") == "True"

    def is_settled(self, type_: str) -> bool:
        """Whether the condition has an outcome (True or False), not absent or Unknown (in progress)."""
        condition = self.condition(type_)
        return condition is not None and condition.get("status") in ("True", "False")

    def since(self, type_: str) -> float:
        """Seconds since the condition last changed status (0 when it is absent)."""
        condition = self.condition(type_)
        moment = parse_utc(condition.get("lastTransitionTime")) if condition else None
        return 0.0 if moment is None else max(0.0, (self._now() - moment).total_seconds())

    def now_text(self) -> str:
        return utc_text(self._now())

    def storage_moves(self) -> list[dict[str, Any]]:
        """Copies of the `status.storageMoves` entries, oldest first."""
        return [dict(move) for move in self.data.get("storageMoves") or []]

    def move_in_progress(self, to_level: str) -> dict[str, Any] | None:
        """The entry of a move to `to_level` that was begun but whose outcome was never written."""
        return next((move for move in reversed(self.storage_moves())
                     if move.get("to") == to_level and move.get("result") == MOVE_IN_PROGRESS), None)

    # ---- writing

    def set(self, key: str, value: Any) -> None:
        """Set a top-level key; the book takes ownership of `value` (pass a fresh object, not a shared one)."""
        if self.data.get(key) != value:
            self.data[key] = value
            self.changed.add(key)

    def set_condition(self, type_: str, status: str, reason: str, message: str) -> bool:
        """Set a condition; lastTransitionTime moves only when its status changes. True if anything changed."""
        conditions = [dict(c) for c in self.data.get("conditions") or []]
        current = next((c for c in conditions if c.get("type") == type_), None)
        wanted = {"type": type_, "status": status, "reason": reason, "message": message,
                  "observedGeneration": self.generation}
        if current is not None:
            same = all(current.get(k) == v for k, v in wanted.items())
            if same:
                return False
            if current.get("status") != status:
                if current.get("status") == "Unknown" and status in ("True", "False"):
                    started = parse_utc(current.get("lastTransitionTime"))
                    if started is not None:
                        self.timings.append(StepTiming(type_, "succeeded" if status == "True" else "failed",
                                                       max(0.0, (self._now() - started).total_seconds())))
                wanted["lastTransitionTime"] = self.now_text()
            else:
                wanted["lastTransitionTime"] = current.get("lastTransitionTime") or self.now_text()
            current.clear()
            current.update(wanted)
        else:
            wanted["lastTransitionTime"] = self.now_text()
            conditions.append(wanted)
        self.set("conditions", conditions)
        return True

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(PendingEvent(type_, reason, message))

    def put_move(self, to_level: str, entry: Mapping[str, Any] | None) -> None:
        """Replace the in-progress entry of the move to `to_level` by `entry` (None drops it); without
        one, append `entry`. Keys whose value is None are left out (the CRD's strings are not nullable)."""
        moves = self.storage_moves()
        index = next((i for i in range(len(moves) - 1, -1, -1)
                      if moves[i].get("to") == to_level and moves[i].get("result") == MOVE_IN_PROGRESS), None)
        compact = None if entry is None else {key: value for key, value in entry.items() if value is not None}
        if index is not None:
            del moves[index]
            if compact is not None:
                moves.insert(index, compact)
        elif compact is not None:
            moves.append(compact)
        self.set("storageMoves", moves)

    def enter(self, phase: Phase, message: str) -> None:
        """Move to `phase` (its step condition becomes Unknown) with a Normal Event."""
        if self.phase == phase.value:
            return
        self.set("phase", phase.value)
        self.set("message", message)
        step = STEP_CONDITIONS.get(phase.value)
        if step is not None and not self.is_true(step):
            self.set_condition(step, "Unknown", "InProgress", message)
        self.event("Normal", phase.value, message)

    def complete_step(self, type_: str, reason: str, message: str) -> None:
        """The step's condition becomes True (the next phase's Event tells the story; no Event here)."""
        self.set_condition(type_, "True", reason, message)

    def fail(self, reason: FailureReason, message: str) -> None:
        """Terminal failure: the running step's condition, Failed=True, Succeeded=False, a Warning Event."""
        step = STEP_CONDITIONS.get(self.phase or "")
        if step is not None and not self.is_true(step):
            self.set_condition(step, "False", reason.value, message)
        self.set("phase", Phase.FAILED.value)
        self.set("reason", reason.value)
        self.set("message", message)
        self.set_condition(ConditionType.FAILED.value, "True", reason.value, message)
        self.set_condition(ConditionType.SUCCEEDED.value, "False", reason.value, message)
        self.set("completionTime", self.now_text())
        self.event("Warning", reason.value, message)

    def stop(self, reason: FailureReason, message: str) -> None:
        """Terminal, on purpose (a sweep's early stopping): phase Stopped, Stopped=True, Succeeded=False."""
        step = STEP_CONDITIONS.get(self.phase or "")
        if step is not None and not self.is_settled(step):
            self.set_condition(step, "False", reason.value, message)
        self.set("phase", Phase.STOPPED.value)
        self.set("reason", reason.value)
        self.set("message", message)
        self.set_condition(ConditionType.STOPPED.value, "True", reason.value, message)
        self.set_condition(ConditionType.FAILED.value, "False", reason.value, message)
        self.set_condition(ConditionType.SUCCEEDED.value, "False", reason.value, message)
        self.set("completionTime", self.now_text())
        self.event("Normal", reason.value, message)

    def succeed(self, message: str) -> None:
        self.set("phase", Phase.SUCCEEDED.value)
        self.set("message", message)
        self.set("reason", None)
        self.set_condition(ConditionType.SUCCEEDED.value, "True", "Succeeded", message)
        self.set_condition(ConditionType.FAILED.value, "False", "Succeeded", message)
        self.set("completionTime", self.now_text())
        self.event("Normal", Phase.SUCCEEDED.value, message)

    def merge_patch(self) -> dict[str, Any]:
        """The `/status` merge patch with every changed top-level key (None deletes it); serialize it at once."""
        return {"status": {key: self.data.get(key) for key in sorted(self.changed)}}

    def written(self) -> None:
        """The patch was accepted: start a new set of changes (events and timings are drained by the caller)."""
        self.changed.clear()
