"""The official TuSimple lane metric (accuracy, FP rate, FN rate), exact and vectorised.

Why this module exists: the official ``evaluate/lane.py`` (TuSimple/tusimple-benchmark) runs one
scikit-learn fit and one Python loop per lane, about a millisecond per image. Validation during
training and ``lanex eval`` need the same numbers much faster and without scikit-learn, so here the
per-lane least-squares slope is closed-form and images are scored in batches of numpy array
operations: images with the same number of rows, ground-truth lanes and predicted lanes form dense
(images, lanes, rows) arrays, so there is no padding and no per-lane Python.

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

Exactness: slopes are computed in closed form for all lanes at once; that can differ from
scikit-learn's LAPACK fit in the last bit, which matters only when a point distance equals the
threshold (e.g. integer lanes of slope 3/4, threshold 25). Lanes with such a tie are re-fitted
the way scikit-learn does (centre by the means, LAPACK gelsd through ``numpy.linalg.lstsq``), so
the counts agree with the official script bit for bit there too.
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
_CHUNK_IMAGES = 128
"""Images per numpy batch: about a megabyte of distances, which stays in cache (faster than big)."""
_TIE_TOLERANCE = 1e-10
"""Relative gap between a point distance and a threshold below which the closed-form slope's last
bits could flip the count: such lanes are re-fitted exactly as scikit-learn does."""
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
class _Bucket:
    """Images that share (#rows, #ground-truth lanes, #predicted lanes): dense arrays, no padding."""

    rows: int
    gt_lanes: int
    pred_lanes: int
    images: list[int] = field(default_factory=list)
    gt_records: list[Mapping[str, Any]] = field(default_factory=list)
    gt_positions: list[int] = field(default_factory=list)
    pred_records: list[Mapping[str, Any]] = field(default_factory=list)
    pred_positions: list[int] = field(default_factory=list)


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
    ``raw_file``, ``lanes`` and ``h_samples``. Lanes may be lists, tuples or numpy arrays.
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
    decode = json.loads
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.isspace():
                    continue
                try:
                    records.append(decode(line))
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
    buckets: dict[tuple[int, int, int], _Bucket] = {}
    for image, raw_file in enumerate(raw_files):
        gt_at, pred_at = gt_index[raw_file], pred_index[raw_file]
        gt, pred = ground_truth[gt_at], predictions[pred_at]
        rows = len(gt["h_samples"])
        _check_lane_lengths(gt["lanes"], rows, gt_source, gt_at, raw_file)
        _check_lane_lengths(pred["lanes"], rows, pred_source, pred_at, raw_file)
        gt_lanes, pred_lanes = len(gt["lanes"]), len(pred["lanes"])
        if pred["run_time"] > MAX_RUN_TIME_MS or pred_lanes > gt_lanes + EXTRA_LANES_ALLOWED:
            fn[image] = 1.0  # too slow or too many lanes: 0, 0, 1 without comparing
            continue
        key = (rows, gt_lanes, pred_lanes)
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(*key)
        bucket.images.append(image)
        bucket.gt_records.append(gt)
        bucket.gt_positions.append(gt_at)
        bucket.pred_records.append(pred)
        bucket.pred_positions.append(pred_at)

    for bucket in buckets.values():
        for start in range(0, len(bucket.images), _CHUNK_IMAGES):
            chunk = slice(start, start + _CHUNK_IMAGES)
            images = np.asarray(bucket.images[chunk], dtype=np.intp)
            accuracy[images], fp[images], fn[images] = _score_bucket(bucket, chunk, gt_source, pred_source)
    return PerImageScores(raw_files, accuracy, fp, fn)


def _index_by_raw_file(records: Sequence[Any], source: _Source, extra_field: str) -> dict[str, int]:
    """Map raw_file -> record index, checking each record's fields once at the edge."""
    index: dict[str, int] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict) and not isinstance(record, Mapping):
            raise EvaluationError(f"{source.at(position)}: expected a JSON object, got {type(record).__name__}")
        try:
            raw_file, lanes, extra = record["raw_file"], record["lanes"], record[extra_field]
        except KeyError as error:
            raise EvaluationError(f"{source.at(position)}: missing field {error.args[0]!r}") from None
        if not isinstance(raw_file, str):
            raise EvaluationError(f"{source.at(position)}: 'raw_file' must be a string, got {raw_file!r}")
        if not isinstance(lanes, _SEQUENCES):
            raise EvaluationError(f"{source.at(position)} ({raw_file!r}): 'lanes' must be a list of lanes")
        if not _valid_extra_field(extra, extra_field):
            raise EvaluationError(
                f"{source.at(position)} ({raw_file!r}): {_EXTRA_FIELD_RULES[extra_field]}, got {extra!r}"
            )
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_lane_lengths(lanes: Sequence[Any], rows: int, source: _Source, position: int, raw_file: str) -> None:
    """Every lane needs one x per h_sample; the official script refuses the whole submission."""
    try:
        if not any(map(rows.__ne__, map(len, lanes))):
            return
    except TypeError:
        pass  # a lane without a length: find and name it below
    for lane_number, lane in enumerate(lanes):
        if not isinstance(lane, _SEQUENCES) or len(lane) != rows:
            size = f"{len(lane)} values" if isinstance(lane, _SEQUENCES) else f"a {type(lane).__name__}"
            raise EvaluationError(
                f"{source.at(position)} ({raw_file!r}): lane {lane_number} has {size}, "
                f"expected {rows} (one x per h_sample)"
            )


def _score_bucket(
    bucket: _Bucket, chunk: slice, gt_source: _Source, pred_source: _Source
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy, FP rate and FN rate of the images `chunk` of one bucket."""
    gt_lanes, pred_lanes = bucket.gt_lanes, bucket.pred_lanes
    ys, gt, pred = _bucket_arrays(bucket, chunk, gt_source, pred_source)
    best = _best_accuracies(gt, ys, pred)  # (images, gt_lanes)
    total = np.zeros(len(ys))
    for lane in range(gt_lanes):  # left to right, like the official sum(line_accs)
        total = total + best[:, lane]
    missed = (best < LANE_MATCH_THRESHOLD).sum(axis=1)
    false_positives = pred_lanes - (gt_lanes - missed)
    if gt_lanes > SCORED_LANES:
        total = total - best.min(axis=1)
        missed = np.where(missed > 0, missed - 1, missed)
    scored = max(min(gt_lanes, SCORED_LANES), 1)
    fp = false_positives / pred_lanes if pred_lanes else np.zeros(len(ys))
    return total / scored, fp, missed / scored


def _bucket_arrays(
    bucket: _Bucket, chunk: slice, gt_source: _Source, pred_source: _Source
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h_samples (images, rows), ground truth (images, G, rows) and predictions (images, P, rows)."""
    gt_records, pred_records = bucket.gt_records[chunk], bucket.pred_records[chunk]
    gt_positions, pred_positions = bucket.gt_positions[chunk], bucket.pred_positions[chunk]
    images, rows = len(gt_records), bucket.rows
    ys = _to_array([gt["h_samples"] for gt in gt_records], rows, gt_source, gt_positions, 1, "h_samples")
    gt_rows = [lane for record in gt_records for lane in record["lanes"]]
    gt = _to_array(gt_rows, rows, gt_source, gt_positions, bucket.gt_lanes, "lanes")
    pred_rows = [lane for record in pred_records for lane in record["lanes"]]
    pred = _to_array(pred_rows, rows, pred_source, pred_positions, bucket.pred_lanes, "lanes")
    return ys, gt.reshape(images, bucket.gt_lanes, rows), pred.reshape(images, bucket.pred_lanes, rows)


def _best_accuracies(gt: np.ndarray, ys: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Best point accuracy of each ground-truth lane over its image's predicted lanes (0 if none).

    gt: (images, G, rows), ys: (images, rows), pred: (images, P, rows) -> (images, G).
    """
    images, gt_lanes, rows = gt.shape
    if pred.shape[1] == 0 or gt_lanes == 0:
        return np.zeros((images, gt_lanes))
    lane_ys = np.broadcast_to(ys[:, None, :], gt.shape)
    thresholds = _lane_thresholds(gt, lane_ys)  # (images, G)
    truth = np.where(gt >= 0, gt, MISSING_X)[:, :, None, :]
    guess = np.where(pred >= 0, pred, MISSING_X)[:, None, :, :]
    # |d| - t < 0 exactly when |d| < t (IEEE subtraction of finite numbers keeps the sign and is
    # zero only for equal operands), and |(|d| - t)| tells how close each point is to a tie.
    margin = np.abs(guess - truth)
    margin -= thresholds[:, :, None, None]
    hits = (margin < 0).sum(axis=3)  # (images, G, P)
    tied = (np.abs(margin) <= _TIE_TOLERANCE * thresholds[:, :, None, None]).any(axis=(2, 3))
    for image, lane in zip(*np.nonzero(tied)):
        exact = _lapack_threshold(gt[image, lane], ys[image])
        hits[image, lane] = (np.abs(guess[image, 0] - truth[image, lane, 0]) < exact).sum(axis=1)
    return hits.max(axis=2) / rows


def _lane_thresholds(gt: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """20 / cos(atan(k)) per ground-truth lane (last axis: rows), k the least-squares slope of x on
    y over the points with x >= 0, and 0 with fewer than two such points."""
    valid = gt >= 0
    points = valid.sum(axis=-1)
    per_lane = np.maximum(points, 1)
    y_mean = np.where(valid, ys, 0.0).sum(axis=-1) / per_lane
    x_mean = np.where(valid, gt, 0.0).sum(axis=-1) / per_lane
    dy = np.where(valid, ys - y_mean[..., None], 0.0)
    dx = np.where(valid, gt - x_mean[..., None], 0.0)
    covariance = np.einsum("...r,...r->...", dy, dx)
    spread = np.einsum("...r,...r->...", dy, dy)
    slope = np.divide(covariance, spread, out=np.zeros(points.shape), where=(points > 1) & (spread > 0))
    return _threshold(slope)


def _threshold(slope: np.ndarray | float) -> np.ndarray:
    return PIXEL_THRESHOLD / np.cos(np.arctan(slope))


def _lapack_threshold(lane: np.ndarray, ys: np.ndarray) -> float:
    """The threshold with the slope computed the way scikit-learn's LinearRegression does it.

    Centre y and x by their means, then solve with LAPACK's gelsd (what scipy's and numpy's
    ``lstsq`` call): the same operations on the same numbers, so the same last bits. Used only for
    lanes where a point distance ties with the threshold, where those bits decide the count.
    """
    valid = lane >= 0
    if valid.sum() < 2:
        return float(_threshold(0.0))
    ys_centred = ys[valid][:, None] - np.average(ys[valid][:, None], axis=0)
    xs_centred = lane[valid] - np.average(lane[valid], axis=0)
    slope = np.linalg.lstsq(ys_centred, xs_centred, rcond=None)[0][0]
    return float(_threshold(slope))


def _to_array(
    values: list[Any], rows: int, source: _Source, positions: list[int], per_record: int, field_name: str
) -> np.ndarray:
    """A list of equally long rows as a (len(values), rows) float array.

    A non-numeric or non-finite value raises `EvaluationError` naming its record (each record
    contributed `per_record` consecutive rows), the lane and the position.
    """
    if not values:
        return np.zeros((0, rows))
    try:
        array = np.array(values)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype.kind not in "iuf" or array.shape != (len(values), rows):
        _raise_bad_value(values, source, positions, per_record, field_name)
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        _raise_bad_value(values, source, positions, per_record, field_name)
    return array


def _raise_bad_value(
    values: list[Any], source: _Source, positions: list[int], per_record: int, field_name: str
) -> None:
    for row_number, row in enumerate(values):
        for point, value in enumerate(row):
            if not _is_number(value):
                record, lane = divmod(row_number, per_record)
                where = field_name if field_name == "h_samples" else f"lane {lane}"
                raise EvaluationError(
                    f"{source.at(positions[record])}: {where}, value {point} is {value!r}, "
                    "expected a finite number"
                )
    raise EvaluationError(f"{source.name}: {field_name} could not be read as numbers")  # pragma: no cover
