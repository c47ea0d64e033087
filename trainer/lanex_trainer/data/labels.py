"""TuSimple label lines: parsing, validation and the ego-relative lane slots SCNN is trained on.

Both `prepare` (which checks every line once) and the training dataset (which turns a label into
segmentation targets) need the same reading of a label, so it lives here and nowhere else.

A TuSimple label line is one JSON object::

    {"lanes": [[x, ...], ...], "h_samples": [y, ...], "raw_file": "clips/<date>/<id>/20.jpg"}

where each lane holds one x per h_sample (pixel columns of the 1280x720 image) and a negative x
(TuSimple writes -2) means "no lane at this row".
"""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath
from typing import Any, Optional, Sequence

NUM_SLOTS = 4
"""SCNN predicts four lanes: two left of the ego vehicle (slots 1, 2) and two right (3, 4)."""

Lane = list[float]


class LabelError(ValueError):
    """A label line that cannot be used; the message starts with where it is (`file:line`)."""


def parse_label_line(text: str, where: str) -> dict[str, Any]:
    """Parse and validate one label line; return `{"raw_file", "h_samples", "lanes"}`.

    `where` (usually `file:line`) prefixes every error so that a bad line can be found at once.
    Lanes are numbered by their position in the `lanes` array, from 0.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise LabelError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(record, dict):
        raise LabelError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("raw_file", "h_samples", "lanes"):
        if field not in record:
            raise LabelError(f"{where}: missing field {field!r}")
    raw_file = record["raw_file"]
    if not isinstance(raw_file, str) or not raw_file.strip():
        raise LabelError(f"{where}: 'raw_file' must be a non-empty string, got {raw_file!r}")
    # Label files come from downloaded archives: a raw_file must not reach outside the dataset.
    parts = PurePosixPath(raw_file.replace("\\", "/")).parts
    if raw_file.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise LabelError(f"{where}: 'raw_file' {raw_file!r} must be a relative path inside the dataset")
    h_samples = _validated_h_samples(record["h_samples"], where)
    lanes = _validated_lanes(record["lanes"], len(h_samples), where)
    return {"raw_file": raw_file, "h_samples": h_samples, "lanes": lanes}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validated_h_samples(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise LabelError(f"{where}: 'h_samples' must be a non-empty list of row numbers")
    rows: list[int] = []
    for position, row in enumerate(value):
        if not _is_number(row) or row < 0 or row != int(row):
            raise LabelError(f"{where}: h_samples[{position}] = {row!r} is not a non-negative integer row")
        rows.append(int(row))
    if any(later <= earlier for earlier, later in zip(rows, rows[1:])):
        raise LabelError(f"{where}: 'h_samples' must be strictly increasing")
    return rows


def _validated_lanes(value: Any, expected_points: int, where: str) -> list[Lane]:
    if not isinstance(value, list):
        raise LabelError(f"{where}: 'lanes' must be a list of lanes")
    lanes: list[Lane] = []
    for number, lane in enumerate(value):
        if not isinstance(lane, list):
            raise LabelError(f"{where}: lane {number} is not a list of x values")
        if len(lane) != expected_points:
            raise LabelError(f"{where}: lane {number} has {len(lane)} points, h_samples has {expected_points}")
        for position, x in enumerate(lane):
            if not _is_number(x):
                raise LabelError(f"{where}: lane {number} point {position} = {x!r} is not a finite number")
        lanes.append([int(x) if x == int(x) else float(x) for x in lane])
    return lanes


def valid_points(lane: Sequence[float], h_samples: Sequence[int]) -> list[tuple[float, int]]:
    """The (x, y) points of a lane where it exists (x >= 0), top to bottom."""
    return [(x, y) for x, y in zip(lane, h_samples) if x >= 0]


def usable_lane_count(lanes: Sequence[Sequence[float]], h_samples: Sequence[int]) -> int:
    """How many lanes have at least two valid points (the others cannot be drawn or fitted)."""
    return sum(1 for lane in lanes if len(valid_points(lane, h_samples)) >= 2)


def assign_slots(
    lanes: Sequence[Sequence[float]], h_samples: Sequence[int], image_width: int = 1280
) -> list[Optional[Lane]]:
    """Order lanes into SCNN's four ego-relative slots; element k of the result is slot id k + 1.

    The rule (SCNN's TuSimple convention, "left to right at the bottom, ids 1..4"):

    * a lane with fewer than two valid points is ignored;
    * each remaining lane is placed by the x of its bottom-most valid point (its largest
      h_sample with x >= 0): left of the image centre (x < image_width / 2) or right of it
      (x >= image_width / 2, so a lane exactly on the centre counts as right);
    * left lanes, nearest the centre first, take slot 2 then slot 1; right lanes, nearest the
      centre first, take slot 3 then slot 4;
    * lanes beyond two per side (the farthest from the centre) are dropped.

    Empty slots are None. The lanes are returned as given (all h_sample values, -2 kept).
    """
    centre = image_width / 2.0
    left: list[tuple[float, Lane]] = []
    right: list[tuple[float, Lane]] = []
    for lane in lanes:
        points = valid_points(lane, h_samples)
        if len(points) < 2:
            continue
        bottom_x = max(points, key=lambda point: point[1])[0]
        (left if bottom_x < centre else right).append((bottom_x, list(lane)))
    left.sort(key=lambda item: centre - item[0])
    right.sort(key=lambda item: item[0] - centre)
    slots: list[Optional[Lane]] = [None] * NUM_SLOTS
    for slot_index, (_, lane) in zip((1, 0), left):
        slots[slot_index] = lane
    for slot_index, (_, lane) in zip((2, 3), right):
        slots[slot_index] = lane
    return slots
