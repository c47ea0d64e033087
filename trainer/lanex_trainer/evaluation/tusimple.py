"""The official TuSimple lane metric (accuracy, FP rate, FN rate), exact and vectorised.

Why this module exists: the official ``evaluate/lane.py`` (TuSimple/tusimple-benchmark) runs one
scikit-learn fit and one Python loop per lane, about a millisecond per image. Validation during
training and ``lanex eval`` need the same numbers much faster and without scikit-learn, so here the
per-lane least-squares slope is closed-form and every image of the same ``h_samples`` length is
scored in one batch of numpy array operations.

Rules, per ground-truth image (identical to the official script):

* every predicted lane must have exactly ``len(h_samples)`` values, else an ``EvaluationError``
  naming the image and the lane (checked before anything else, as the official script does);
* ``run_time > 200`` ms or more than ``#gt + 2`` predicted lanes scores accuracy 0, FP 0, FN 1;
* each ground-truth lane gets a threshold ``20 / cos(atan(k))`` where ``x = k*y + b`` is the
  least-squares fit on its points with ``x >= 0`` (fewer than 2 such points: ``k = 0``);
* negative x on either side becomes -100; a predicted lane's accuracy against a ground-truth lane is
  the share of the ``h_samples`` rows where ``|pred - gt| < threshold`` (rows missing on both
  sides count as correct);
* each ground-truth lane keeps its best accuracy over all predicted lanes (no one-to-one
  assignment); best ``< 0.85`` is a false negative, otherwise it is matched;
* FP = #pred - #matched. Because one predicted lane may match several ground-truth lanes this can
  be negative, exactly as in the official script; we keep it so the numbers stay comparable;
* with more than 4 ground-truth lanes, FN drops by one (when positive) and the lowest lane
  accuracy leaves the sum;
* accuracy = sum / max(min(4, #gt), 1); FP rate = FP / #pred (0 without predicted lanes);
  FN rate = FN / max(min(#gt, 4), 1). Dataset scores are means over the ground-truth images.

Choices where the official script is silent or stricter, made on purpose:

* predictions for images that are not in the ground truth are ignored (so a model can predict a
  whole split and be scored on a subset, e.g. one rank's shard); every ground-truth image must
  have a prediction, else an error naming the missing ``raw_file``;
* a ``raw_file`` listed twice in one input is an error (the official script would silently let
  the last ground-truth line win, or count a prediction twice);
* non-numeric or non-finite lane values, empty ``h_samples`` and ground-truth lanes whose length is
  not ``len(h_samples)`` are errors (the official script fails on them too, without saying where).

Exactness: the slope is computed in closed form instead of by LAPACK, so it can differ from
scikit-learn's in the last bits. Counts only change if a point distance equals the threshold to
within ~1e-14 relative on a lane that is neither vertical nor fitted from < 2 points; vertical lanes
(k exactly 0) give the threshold 20.0 exactly in both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PIXEL_THRESHOLD = 20.0
"""Base point tolerance in pixels, widened to 20 / cos(angle) for slanted lanes."""
LANE_MATCH_THRESHOLD = 0.85
"""Minimum point accuracy for a ground-truth lane to count as detected."""
MAX_RUN_TIME_MS = 200.0
"""Predictions slower than this (run_time, ms) score accuracy 0, FP 0, FN 1."""
EXTRA_LANES_ALLOWED = 2
"""More than #gt + this many predicted lanes scores accuracy 0, FP 0, FN 1."""
MISSING_X = -100.0
"""Every negative x, on both sides, is replaced by this before comparing."""
SCORED_LANES = 4
"""TuSimple scores at most 4 lanes per image."""
_CHUNK_IMAGES = 1024
"""Images scored per numpy batch; bounds memory to a few tens of MB."""
_SEQUENCES = (list, tuple, np.ndarray)
"""What the in-memory API accepts as a list of lanes or a lane (JSON gives lists)."""
_EXTRA_FIELD_RULES = {
    "run_time": "'run_time' must be a finite number of milliseconds",
    "h_samples": "'h_samples' must be a non-empty list of image rows",
}


class EvaluationError(ValueError):
    """The inputs cannot be scored; the message names the file or record, the field and the fault."""


@dataclass(frozen=True)
class MetricSums:
    """Sums of per-image scores: add them across shards or ranks, then divide by the total count."""

    accuracy_sum: float = 0.0
    fp_sum: float = 0.0
    fn_sum: float = 0.0
    count: int = 0

    def __add__(self, other: MetricSums) -> MetricSums:
        return MetricSums(
            self.accuracy_sum + other.accuracy_sum,
            self.fp_sum + other.fp_sum,
            self.fn_sum + other.fn_sum,
            self.count + other.count,
        )

    def as_list(self) -> list[float]:
        """``[accuracy_sum, fp_sum, fn_sum, count]``: one vector to all-reduce (sum) across ranks."""
        return [self.accuracy_sum, self.fp_sum, self.fn_sum, float(self.count)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> MetricSums:
        """Inverse of `as_list`, e.g. on the all-reduced vector."""
        accuracy_sum, fp_sum, fn_sum, count = (float(value) for value in values)
        return cls(accuracy_sum, fp_sum, fn_sum, int(round(count)))

    def scores(self) -> dict[str, float | int]:
        """Dataset scores (means over images) as ``{accuracy, fp, fn, images}``."""
        if self.count <= 0:
            raise EvaluationError("no ground-truth images to score")
        return {
            "accuracy": self.accuracy_sum / self.count,
            "fp": self.fp_sum / self.count,
            "fn": self.fn_sum / self.count,
            "images": self.count,
        }


def combine(parts: Iterable[MetricSums]) -> MetricSums:
    """Sum the `MetricSums` of several shards (e.g. gathered from every rank)."""
    total = MetricSums()
    for part in parts:
        total = total + part
    return total


@dataclass(frozen=True)
class PerImageScores:
    """Accuracy, FP rate and FN rate of every ground-truth image, in ground-truth order."""

    raw_files: tuple[str, ...]
    accuracy: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    def sums(self) -> MetricSums:
        return MetricSums(
            float(self.accuracy.sum()), float(self.fp.sum()), float(self.fn.sum()), len(self.raw_files)
        )


@dataclass(frozen=True)
class _Source:
    """Where records came from, to name them in errors: a file with line numbers, or a list."""

    name: str
    line_numbers: Sequence[int] | None = None

    def at(self, index: int) -> str:
        if self.line_numbers is None:
            return f"{self.name}[{index}]"
        return f"{self.name} line {self.line_numbers[index]}"


@dataclass
class _Batch:
    """Images with one ``h_samples`` length, their lanes flattened in image order."""

    length: int
    gt_source: _Source
    pred_source: _Source
    rows: list[int] = field(default_factory=list)
    h_samples: list[list[Any]] = field(default_factory=list)
    gt_lanes: list[list[Any]] = field(default_factory=list)
    gt_counts: list[int] = field(default_factory=list)
    gt_positions: list[int] = field(default_factory=list)
    pred_lanes: list[list[Any]] = field(default_factory=list)
    pred_counts: list[int] = field(default_factory=list)
    pred_positions: list[int] = field(default_factory=list)

    def add(self, row: int, gt: Mapping[str, Any], gt_at: int, pred: Mapping[str, Any], pred_at: int) -> None:
        self.rows.append(row)
        self.h_samples.append(gt["h_samples"])
        self.gt_lanes.extend(gt["lanes"])
        self.gt_counts.append(len(gt["lanes"]))
        self.gt_positions.append(gt_at)
        self.pred_lanes.extend(pred["lanes"])
        self.pred_counts.append(len(pred["lanes"]))
        self.pred_positions.append(pred_at)

    def split(self, size: int) -> Iterable[_Batch]:
        """Consecutive sub-batches of at most `size` images."""
        gt_start = pred_start = 0
        for start in range(0, len(self.rows), size):
            stop = start + size
            gt_stop = gt_start + sum(self.gt_counts[start:stop])
            pred_stop = pred_start + sum(self.pred_counts[start:stop])
            yield _Batch(
                self.length,
                self.gt_source,
                self.pred_source,
                self.rows[start:stop],
                self.h_samples[start:stop],
                self.gt_lanes[gt_start:gt_stop],
                self.gt_counts[start:stop],
                self.gt_positions[start:stop],
                self.pred_lanes[pred_start:pred_stop],
                self.pred_counts[start:stop],
                self.pred_positions[start:stop],
            )
            gt_start, pred_start = gt_stop, pred_stop


def evaluate_files(pred_path: str | Path, gt_path: str | Path) -> dict[str, float | int]:
    """Score a prediction file against a ground-truth file (both TuSimple JSON lines).

    Returns ``{accuracy, fp, fn, images}``: the official Accuracy, FP and FN plus the image count.
    """
    predictions, pred_lines = load_json_lines(pred_path)
    ground_truth, gt_lines = load_json_lines(gt_path)
    per_image = _evaluate_records(
        predictions, _Source(str(pred_path), pred_lines), ground_truth, _Source(str(gt_path), gt_lines)
    )
    return per_image.sums().scores()


def evaluate(
    predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]]
) -> dict[str, float | int]:
    """Score in-memory records: ``{accuracy, fp, fn, images}``, means over the ground-truth images.

    Predictions need ``raw_file``, ``lanes`` and ``run_time`` (ms); ground truth needs
    ``raw_file``, ``lanes`` and ``h_samples``.
    """
    return evaluate_per_image(predictions, ground_truth).sums().scores()


def evaluate_per_image(
    predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]]
) -> PerImageScores:
    """Score every ground-truth image; ``.sums()`` gives what to add across ranks."""
    return _evaluate_records(predictions, _Source("predictions"), ground_truth, _Source("ground_truth"))


def load_json_lines(path: str | Path) -> tuple[list[Any], list[int]]:
    """Parse a JSON-lines file; returns the records and their 1-based line numbers.

    Blank lines are skipped; a malformed line raises `EvaluationError` naming file and line.
    """
    records: list[Any] = []
    line_numbers: list[int] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise EvaluationError(
                        f"{path} line {number}: invalid JSON: {error.msg} (column {error.colno})"
                    ) from error
                line_numbers.append(number)
    except OSError as error:
        raise EvaluationError(f"cannot read {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise EvaluationError(f"{path}: not UTF-8 text ({error.reason})") from error
    return records, line_numbers


def _evaluate_records(
    predictions: Sequence[Any], pred_source: _Source, ground_truth: Sequence[Any], gt_source: _Source
) -> PerImageScores:
    gt_index = _index_by_raw_file(ground_truth, gt_source, "h_samples")
    pred_index = _index_by_raw_file(predictions, pred_source, "run_time")
    missing = [raw_file for raw_file in gt_index if raw_file not in pred_index]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise EvaluationError(
            f"{pred_source.name}: no prediction for {len(missing)} ground-truth image(s): {shown}{more}"
        )

    raw_files = tuple(gt_index)
    accuracy = np.zeros(len(raw_files))
    fp = np.zeros(len(raw_files))
    fn = np.zeros(len(raw_files))
    batches: dict[int, _Batch] = {}
    for row, raw_file in enumerate(raw_files):
        gt_at = gt_index[raw_file]
        pred_at = pred_index[raw_file]
        gt, pred = ground_truth[gt_at], predictions[pred_at]
        length = len(gt["h_samples"])
        _check_lane_lengths(gt["lanes"], length, gt_source, gt_at, raw_file)
        _check_lane_lengths(pred["lanes"], length, pred_source, pred_at, raw_file)
        if _disqualified(pred, gt):
            fn[row] = 1.0
            continue
        batch = batches.get(length)
        if batch is None:
            batch = batches[length] = _Batch(length, gt_source, pred_source)
        batch.add(row, gt, gt_at, pred, pred_at)

    for batch in batches.values():
        for chunk in batch.split(_CHUNK_IMAGES):
            rows = np.asarray(chunk.rows, dtype=np.intp)
            accuracy[rows], fp[rows], fn[rows] = _score_batch(chunk)
    return PerImageScores(raw_files, accuracy, fp, fn)


def _index_by_raw_file(records: Sequence[Any], source: _Source, extra_field: str) -> dict[str, int]:
    """Map raw_file -> record index, checking each record's fields once at the edge."""
    index: dict[str, int] = {}
    for position, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise EvaluationError(f"{source.at(position)}: expected a JSON object, got {type(record).__name__}")
        for name in ("raw_file", "lanes", extra_field):
            if name not in record:
                raise EvaluationError(f"{source.at(position)}: missing field {name!r}")
        raw_file = record["raw_file"]
        if not isinstance(raw_file, str):
            raise EvaluationError(f"{source.at(position)}: 'raw_file' must be a string, got {raw_file!r}")
        if not isinstance(record["lanes"], _SEQUENCES):
            raise EvaluationError(f"{source.at(position)} ({raw_file!r}): 'lanes' must be a list of lanes")
        if not _valid_extra_field(record[extra_field], extra_field):
            raise EvaluationError(f"{source.at(position)} ({raw_file!r}): {_EXTRA_FIELD_RULES[extra_field]}")
        if raw_file in index:
            raise EvaluationError(
                f"{source.at(position)}: raw_file {raw_file!r} already appears at {source.at(index[raw_file])}"
            )
        index[raw_file] = position
    return index


def _valid_extra_field(value: Any, name: str) -> bool:
    if name == "run_time":
        return _is_number(value)
    return isinstance(value, _SEQUENCES) and len(value) > 0


def _check_lane_lengths(lanes: list[Any], length: int, source: _Source, position: int, raw_file: str) -> None:
    for lane_number, lane in enumerate(lanes):
        if not isinstance(lane, _SEQUENCES) or len(lane) != length:
            size = f"{len(lane)} values" if isinstance(lane, _SEQUENCES) else f"a {type(lane).__name__}"
            raise EvaluationError(
                f"{source.at(position)} ({raw_file!r}): lane {lane_number} has {size}, "
                f"expected {length} (one x per h_sample)"
            )


def _disqualified(pred: Mapping[str, Any], gt: Mapping[str, Any]) -> bool:
    """Too slow or too many lanes: the official script scores these 0, 0, 1 without comparing."""
    return pred["run_time"] > MAX_RUN_TIME_MS or len(pred["lanes"]) > len(gt["lanes"]) + EXTRA_LANES_ALLOWED


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _score_batch(batch: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy, FP rate and FN rate of images that share one h_samples length."""
    length = batch.length
    images = len(batch.rows)
    gt_counts = np.asarray(batch.gt_counts, dtype=np.intp)
    pred_counts = np.asarray(batch.pred_counts, dtype=np.intp)
    ys = _to_matrix(batch.h_samples, length, np.ones(images, dtype=np.intp), batch.gt_source, batch.gt_positions, "h_samples")
    gt = _to_matrix(batch.gt_lanes, length, gt_counts, batch.gt_source, batch.gt_positions, "lanes")
    pred = _to_matrix(batch.pred_lanes, length, pred_counts, batch.pred_source, batch.pred_positions, "lanes")

    gt_image = np.repeat(np.arange(images), gt_counts)
    thresholds = _lane_thresholds(gt, ys[gt_image])
    best = _best_accuracies(gt, gt_image, thresholds, pred, pred_counts, images)

    max_gt = int(gt_counts.max(initial=0))
    gt_slot = np.arange(len(gt_image)) - np.repeat(np.cumsum(gt_counts) - gt_counts, gt_counts)
    padded = np.zeros((images, max_gt))
    padded[gt_image, gt_slot] = best
    total = np.zeros(images)
    for slot in range(max_gt):  # left to right, like the official sum(line_accs)
        total = total + padded[:, slot]
    lowest = np.full((images, max_gt), np.inf)
    lowest[gt_image, gt_slot] = best
    many = gt_counts > SCORED_LANES
    if max_gt:
        total = np.where(many, total - lowest.min(axis=1), total)

    missed = np.bincount(gt_image, weights=best < LANE_MATCH_THRESHOLD, minlength=images)
    matched = gt_counts - missed
    missed = np.where(many & (missed > 0), missed - 1, missed)
    false_positives = pred_counts - matched
    scored_lanes = np.maximum(np.minimum(gt_counts, SCORED_LANES), 1)
    accuracy = total / scored_lanes
    fp = np.divide(false_positives, pred_counts, out=np.zeros(images), where=pred_counts > 0)
    fn = missed / scored_lanes
    return accuracy, fp, fn


def _lane_thresholds(gt: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """20 / cos(atan(k)) per ground-truth lane, k the least-squares slope of x on y over x >= 0."""
    valid = gt >= 0
    points = valid.sum(axis=1)
    per_lane = np.maximum(points, 1)
    y_mean = np.where(valid, ys, 0.0).sum(axis=1) / per_lane
    x_mean = np.where(valid, gt, 0.0).sum(axis=1) / per_lane
    dy = np.where(valid, ys - y_mean[:, None], 0.0)
    dx = np.where(valid, gt - x_mean[:, None], 0.0)
    covariance = (dy * dx).sum(axis=1)
    spread = (dy * dy).sum(axis=1)
    slope = np.divide(covariance, spread, out=np.zeros(len(gt)), where=(points > 1) & (spread > 0))
    return PIXEL_THRESHOLD / np.cos(np.arctan(slope))


def _best_accuracies(
    gt: np.ndarray,
    gt_image: np.ndarray,
    thresholds: np.ndarray,
    pred: np.ndarray,
    pred_counts: np.ndarray,
    images: int,
) -> np.ndarray:
    """Best point accuracy of each ground-truth lane over its image's predicted lanes (0 if none)."""
    length = gt.shape[1]
    max_pred = int(pred_counts.max(initial=0))
    if max_pred == 0 or len(gt) == 0:
        return np.zeros(len(gt))
    # Padding rows are NaN: they never hit, so they cannot raise a maximum that starts at 0.
    padded = np.full((images, max_pred, length), np.nan)
    pred_image = np.repeat(np.arange(images), pred_counts)
    pred_slot = np.arange(len(pred_image)) - np.repeat(np.cumsum(pred_counts) - pred_counts, pred_counts)
    padded[pred_image, pred_slot] = np.where(pred >= 0, pred, MISSING_X)
    truth = np.where(gt >= 0, gt, MISSING_X)
    hits = np.abs(padded[gt_image] - truth[:, None, :]) < thresholds[:, None, None]
    return hits.sum(axis=2).max(axis=1) / length


def _to_matrix(
    rows: list[list[Any]], length: int, counts: np.ndarray, source: _Source, positions: list[int], field_name: str
) -> np.ndarray:
    """Rows of equal length as a float matrix; a non-numeric or non-finite value names its record."""
    if not rows:
        return np.zeros((0, length))
    try:
        matrix = np.array(rows)
    except (ValueError, TypeError):
        matrix = None
    if matrix is None or matrix.dtype.kind not in "iuf" or matrix.shape != (len(rows), length):
        _raise_bad_value(rows, counts, source, positions, field_name)
    matrix = matrix.astype(np.float64, copy=False)
    if not np.isfinite(matrix).all():
        _raise_bad_value(rows, counts, source, positions, field_name)
    return matrix


def _raise_bad_value(
    rows: list[list[Any]], counts: np.ndarray, source: _Source, positions: list[int], field_name: str
) -> None:
    image_of_row = np.repeat(np.arange(len(counts)), counts)
    first_row = np.cumsum(counts) - counts
    for row_number, row in enumerate(rows):
        for point, value in enumerate(row):
            if not _is_number(value):
                image = int(image_of_row[row_number])
                where = field_name if field_name == "h_samples" else f"lane {row_number - int(first_row[image])}"
                raise EvaluationError(
                    f"{source.at(positions[image])}: {where}, value {point} is {value!r}, expected a finite number"
                )
    raise EvaluationError(f"{source.name}: {field_name} could not be read as numbers")
