"""The fast TuSimple metric gives the official numbers: every rule by hand, then random images
against the plain sklearn-based reference, then the errors and the `lanex eval` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tusimple_reference as reference  # noqa: E402

from lanex_trainer.evaluation.tusimple import (  # noqa: E402
    EvaluationError,
    MetricSums,
    combine,
    evaluate,
    evaluate_files,
    evaluate_per_image,
)

LANEX = Path(sys.executable).parent / "lanex"
ROWS_160 = list(range(160, 720, 10))  # 56 rows
ROWS_240 = list(range(240, 720, 10))  # 48 rows


def vertical(x: float, rows: list[int] = ROWS_160) -> list[float]:
    return [x] * len(rows)


def slanted(x_at_top: float, slope: float, rows: list[int] = ROWS_160) -> list[float]:
    return [x_at_top + slope * (y - rows[0]) for y in rows]


def gt_entry(lanes: list[list[float]], rows: list[int] = ROWS_160, raw_file: str = "clips/a/1/20.jpg") -> dict:
    return {"raw_file": raw_file, "lanes": [list(lane) for lane in lanes], "h_samples": list(rows)}


def pred_entry(lanes: list[list[float]], run_time: float = 10.0, raw_file: str = "clips/a/1/20.jpg") -> dict:
    return {"raw_file": raw_file, "lanes": [list(lane) for lane in lanes], "run_time": run_time}


def score_one(pred_lanes: list, gt_lanes: list, run_time: float = 10.0, rows: list[int] = ROWS_160) -> tuple:
    """(accuracy, fp, fn) of one image from the fast metric, checked against the reference too."""
    fast = evaluate([pred_entry(pred_lanes, run_time)], [gt_entry(gt_lanes, rows)])
    slow = reference.bench(pred_lanes, gt_lanes, rows, run_time)
    assert (fast["accuracy"], fast["fp"], fast["fn"]) == pytest.approx(slow, abs=1e-12)
    assert fast["images"] == 1
    return fast["accuracy"], fast["fp"], fast["fn"]


FOUR_LANES = [vertical(300), vertical(500), vertical(700), vertical(900)]


# --- every rule, by hand -------------------------------------------------------------------


def test_perfect_prediction_scores_full_accuracy_and_no_errors():
    assert score_one(FOUR_LANES, FOUR_LANES) == (1.0, 0.0, 0.0)


def test_shift_just_inside_the_20px_threshold_still_hits():
    shifted = [[x + 19.99 for x in lane] for lane in FOUR_LANES]
    assert score_one(shifted, FOUR_LANES) == (1.0, 0.0, 0.0)


def test_shift_of_exactly_20px_misses_every_point_on_a_vertical_lane():
    shifted = [[x + 20 for x in lane] for lane in FOUR_LANES]
    assert score_one(shifted, FOUR_LANES) == (0.0, 1.0, 1.0)


def test_steep_lane_widens_the_threshold_to_20_over_cos_angle():
    lane = slanted(300, 1.0)  # slope 1: threshold 20 * sqrt(2) = 28.28
    assert score_one([[x + 28 for x in lane]], [lane]) == (1.0, 0.0, 0.0)
    assert score_one([[x + 29 for x in lane]], [lane]) == (0.0, 1.0, 1.0)


def test_run_time_over_200ms_scores_zero_accuracy_and_full_miss():
    assert score_one(FOUR_LANES, FOUR_LANES, run_time=201) == (0.0, 0.0, 1.0)
    assert score_one(FOUR_LANES, FOUR_LANES, run_time=200) == (1.0, 0.0, 0.0)


def test_more_than_two_extra_predicted_lanes_scores_zero():
    extra = [vertical(50), vertical(1100), vertical(1200)]
    assert score_one(FOUR_LANES + extra, FOUR_LANES) == (0.0, 0.0, 1.0)
    accuracy, fp, fn = score_one(FOUR_LANES + extra[:2], FOUR_LANES)
    assert (accuracy, fn) == (1.0, 0.0)
    assert fp == pytest.approx(2 / 6)


def test_five_ground_truth_lanes_drop_the_worst_lane_and_one_miss():
    five = FOUR_LANES + [vertical(1100)]
    assert score_one(FOUR_LANES, five) == (1.0, 0.0, 0.0)
    half = [x if i % 2 else -2 for i, x in enumerate(vertical(1100))]
    # The half-matched lane (0.5) is the dropped minimum and the one forgiven miss, but its
    # predicted lane still counts as a false positive.
    assert score_one(FOUR_LANES + [half], five) == (1.0, 1 / 5, 0.0)


def test_five_ground_truth_lanes_with_two_misses_keep_one_fn():
    five = FOUR_LANES + [vertical(1100)]
    accuracy, fp, fn = score_one(FOUR_LANES[:3], five)
    assert accuracy == 3 / 4 and fp == 0.0 and fn == 1 / 4


def test_points_missing_on_both_sides_count_as_correct():
    gt = [x if i >= 20 else -2 for i, x in enumerate(vertical(400))]
    both_missing = list(gt)
    assert score_one([both_missing], [gt]) == (1.0, 0.0, 0.0)
    pred_only_missing = [-2 if i < 30 else x for i, x in enumerate(gt)]  # 10 real points lost
    accuracy, _, _ = score_one([pred_only_missing], [gt])
    assert accuracy == (56 - 10) / 56


def test_prediction_present_where_ground_truth_is_missing_counts_as_wrong():
    gt = [x if i >= 28 else -2 for i, x in enumerate(vertical(400))]
    pred = vertical(400)
    assert score_one([pred], [gt])[0] == 28 / 56


def test_empty_prediction_misses_every_lane_without_false_positives():
    assert score_one([], FOUR_LANES) == (0.0, 0.0, 1.0)


def test_image_without_ground_truth_lanes_counts_predicted_lanes_as_false_positives():
    assert score_one([vertical(400)], []) == (0.0, 1.0, 0.0)
    assert score_one([], []) == (0.0, 0.0, 0.0)


def test_lane_with_fewer_than_two_valid_points_uses_the_plain_20px_threshold():
    gt = [-2] * 55 + [600]
    pred = [-2] * 55 + [619.5]
    assert score_one([pred], [gt]) == (1.0, 0.0, 0.0)
    assert score_one([[-2] * 55 + [620.5]], [gt])[0] == 55 / 56


def test_one_predicted_lane_matching_two_close_lanes_gives_a_negative_fp_like_the_official_script():
    gt = [vertical(400), vertical(410)]
    assert score_one([vertical(405)], gt) == (1.0, -1.0, 0.0)


def test_ground_truth_on_the_240_row_grid():
    gt = [slanted(200, -0.4, ROWS_240), slanted(600, 0.6, ROWS_240)]
    pred = [[x + 21 for x in lane] for lane in gt]
    assert score_one(pred, gt, rows=ROWS_240) == (1.0, 0.0, 0.0)


def test_predictions_for_images_outside_the_ground_truth_are_ignored():
    extra = pred_entry([vertical(1)], raw_file="clips/other/1/20.jpg")
    scores = evaluate([extra, pred_entry(FOUR_LANES)], [gt_entry(FOUR_LANES)])
    assert scores == {"accuracy": 1.0, "fp": 0.0, "fn": 0.0, "images": 1}


# --- random images against the reference ---------------------------------------------------


def random_lane(rng: np.random.Generator, rows: list[int]) -> list[float]:
    ys = np.asarray(rows, dtype=float)
    depth = ys - ys[0]
    x = rng.uniform(-200, 1480) + rng.uniform(-2.5, 2.5) * depth + rng.uniform(-2e-3, 2e-3) * depth**2
    lane = np.where((x >= 0) & (x < 1280), x, -2.0)
    lane[: rng.integers(0, len(rows) // 2)] = -2.0  # lanes start below the horizon
    lane[rng.random(len(rows)) < 0.08] = -2.0  # occlusions
    if rng.random() < 0.5:
        lane = np.where(lane >= 0, np.round(lane), lane)  # annotations are often integers
    return lane.tolist()


def random_prediction(rng: np.random.Generator, gt_lane: list[float]) -> list[float]:
    lane = np.asarray(gt_lane) + rng.normal(0, rng.choice([1.0, 6.0, 15.0, 30.0]), len(gt_lane))
    lane += rng.choice([0.0, 0.0, 15.0, -25.0])
    lane = np.where(np.asarray(gt_lane) >= 0, lane, -2.0)
    lane[rng.random(len(lane)) < 0.05] = -2.0
    lane[rng.random(len(lane)) < 0.03] = rng.uniform(0, 1280)  # predicted where gt has nothing
    if rng.random() < 0.5:
        lane = np.where(lane >= 0, np.round(lane), -2.0)
    return lane.tolist()


def random_image(rng: np.random.Generator, index: int) -> tuple[dict, dict]:
    rows = ROWS_160 if rng.random() < 0.5 else ROWS_240
    gt_lanes = [random_lane(rng, rows) for _ in range(rng.choice([0, 1, 2, 3, 4, 4, 4, 5, 5, 6]))]
    if gt_lanes and rng.random() < 0.1:
        gt_lanes[0] = [-2.0] * len(rows)  # no valid point: threshold 20
    if gt_lanes and rng.random() < 0.1:
        gt_lanes[-1] = [-2.0] * (len(rows) - 1) + [float(rng.integers(0, 1280))]
    pred_lanes = [random_prediction(rng, lane) for lane in gt_lanes if rng.random() < 0.85]
    for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
        pred_lanes.insert(int(rng.integers(0, len(pred_lanes) + 1)), random_lane(rng, rows))
    if rng.random() < 0.05:
        pred_lanes.extend(random_lane(rng, rows) for _ in range(len(gt_lanes) + 3 - len(pred_lanes)))
    run_time = float(rng.choice([0.0, 5.5, 200.0, 200.5, 1000.0], p=[0.2, 0.6, 0.1, 0.05, 0.05]))
    raw_file = f"clips/random/{index}/20.jpg"
    return pred_entry(pred_lanes, run_time, raw_file), gt_entry(gt_lanes, rows, raw_file)


def test_random_images_score_exactly_like_the_reference():
    rng = np.random.default_rng(20240601)
    pairs = [random_image(rng, index) for index in range(400)]
    predictions = [pred for pred, _ in pairs]
    ground_truth = [gt for _, gt in pairs]
    rng.shuffle(predictions)  # matching is by raw_file, not by order

    per_image = evaluate_per_image(predictions, ground_truth)
    assert per_image.raw_files == tuple(gt["raw_file"] for gt in ground_truth)
    for row, (pred, gt) in enumerate(pairs):
        expected = reference.bench(pred["lanes"], gt["lanes"], gt["h_samples"], pred["run_time"])
        got = (per_image.accuracy[row], per_image.fp[row], per_image.fn[row])
        assert got == pytest.approx(expected, abs=1e-9, rel=0), gt["raw_file"]
        assert got == expected, gt["raw_file"]  # in fact bit for bit

    fast = evaluate(predictions, ground_truth)
    slow = reference.evaluate(predictions, ground_truth)
    for key in ("accuracy", "fp", "fn"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-9)
    # The random set must exercise every branch, or the comparison proves little.
    assert 0.3 < fast["accuracy"] < 0.95 and fast["fp"] > 0.05 and fast["fn"] > 0.05
    assert (per_image.fn == 1.0).sum() > 10  # includes too-slow and too-many-lanes images
    assert (per_image.fp < 0).sum() > 0  # one predicted lane matching two ground-truth lanes
    assert sum(len(gt["lanes"]) > 4 for gt in ground_truth) > 50


def test_distances_equal_to_a_slanted_threshold_are_decided_like_scikit_learn():
    # Slopes 3/4, 21/20 and 12/5 give thresholds of exactly 25, 29 and 52 px: with integer shifts
    # of that size, the last bit of the fitted slope decides every point.
    rng = np.random.default_rng(5)
    predictions, ground_truth = [], []
    for index in range(120):
        slope = float(rng.choice([0.75, -0.75, 1.05, -1.05, 2.4, -2.4]))
        shift = round(20 / math.cos(math.atan(slope)))
        start = float(rng.integers(0, 300)) if slope > 0 else float(rng.integers(1000, 1280))
        gt = np.array(slanted(start, slope))
        gt[(gt < 0) | (gt >= 1280) | (rng.random(len(gt)) < 0.3)] = -2
        pred = np.where(gt >= 0, gt + rng.choice([-shift, shift], len(gt)), -2)
        raw_file = f"clips/tie/{index}/20.jpg"
        predictions.append(pred_entry([pred.tolist()], raw_file=raw_file))
        ground_truth.append(gt_entry([gt.tolist()], raw_file=raw_file))
    per_image = evaluate_per_image(predictions, ground_truth)
    for row, (pred, gt) in enumerate(zip(predictions, ground_truth)):
        expected = reference.bench(pred["lanes"], gt["lanes"], gt["h_samples"], pred["run_time"])
        assert (per_image.accuracy[row], per_image.fp[row], per_image.fn[row]) == expected, gt["raw_file"]
    assert 0.2 < per_image.accuracy.mean() < 0.9  # ties fall both ways, so the bits mattered


def test_shard_sums_combine_to_the_whole_dataset_score():
    rng = np.random.default_rng(7)
    pairs = [random_image(rng, index) for index in range(60)]
    predictions = [pred for pred, _ in pairs]
    shards = [[gt for _, gt in pairs[rank::3]] for rank in range(3)]
    parts = [evaluate_per_image(predictions, shard).sums() for shard in shards]
    reduced = MetricSums.from_list(np.sum([part.as_list() for part in parts], axis=0))
    whole = evaluate(predictions, [gt for _, gt in pairs])
    for total in (combine(parts), reduced):
        scores = total.scores()
        assert scores["images"] == 60
        for key in ("accuracy", "fp", "fn"):
            assert scores[key] == pytest.approx(whole[key], abs=1e-12)


# --- errors --------------------------------------------------------------------------------


def test_lane_with_wrong_number_of_points_names_image_and_lane():
    pred = pred_entry([vertical(300), vertical(500)[:-1]], run_time=500, raw_file="clips/x/7/20.jpg")
    with pytest.raises(EvaluationError, match=r"clips/x/7/20\.jpg.*lane 1 has 55 values, expected 56"):
        evaluate([pred], [gt_entry(FOUR_LANES, raw_file="clips/x/7/20.jpg")])


def test_missing_prediction_names_the_image():
    with pytest.raises(EvaluationError, match=r"no prediction .*'clips/b/2/20\.jpg'"):
        ground_truth = [gt_entry(FOUR_LANES), gt_entry(FOUR_LANES, raw_file="clips/b/2/20.jpg")]
        evaluate([pred_entry(FOUR_LANES)], ground_truth)


def test_duplicate_raw_file_is_rejected():
    with pytest.raises(EvaluationError, match=r"predictions\[1\]: raw_file 'clips/a/1/20\.jpg' already appears"):
        evaluate([pred_entry(FOUR_LANES), pred_entry(FOUR_LANES)], [gt_entry(FOUR_LANES)])


def test_non_numeric_lane_value_names_record_lane_and_point():
    lanes = [vertical(300), vertical(500)]
    lanes[1][3] = "510"
    with pytest.raises(EvaluationError, match=r"predictions\[0\]: lane 1, value 3 is '510'"):
        evaluate([pred_entry(lanes)], [gt_entry(FOUR_LANES)])


def test_ground_truth_lane_of_wrong_length_names_the_ground_truth_record():
    gt = gt_entry([vertical(300), vertical(500)[:40]], raw_file="clips/g/3/20.jpg")
    with pytest.raises(EvaluationError, match=r"ground_truth\[0\] \('clips/g/3/20\.jpg'\): lane 1 has 40 values"):
        evaluate([pred_entry(FOUR_LANES, raw_file="clips/g/3/20.jpg")], [gt])


def test_nan_and_nested_lane_values_are_rejected():
    with pytest.raises(EvaluationError, match=r"predictions\[0\]: lane 0, value 5 is nan"):
        evaluate([pred_entry([[300.0] * 5 + [math.nan] + [300.0] * 50])], [gt_entry(FOUR_LANES)])
    with pytest.raises(EvaluationError, match=r"ground_truth\[0\]: lane 0, value 0 is \[300\]"):
        evaluate([pred_entry(FOUR_LANES)], [gt_entry([[[300]] * 56] * 4)])


def test_numpy_lanes_from_the_trainer_score_like_lists():
    pred = {"raw_file": "clips/a/1/20.jpg", "lanes": np.array(FOUR_LANES) + 3.0, "run_time": 12.5}
    gt = gt_entry(FOUR_LANES)
    assert evaluate([pred], [gt]) == evaluate([pred_entry((np.array(FOUR_LANES) + 3.0).tolist(), 12.5)], [gt])
    assert evaluate([pred], [gt])["accuracy"] == 1.0


def test_missing_run_time_is_rejected():
    with pytest.raises(EvaluationError, match="missing field 'run_time'"):
        evaluate([{"raw_file": "clips/a/1/20.jpg", "lanes": []}], [gt_entry(FOUR_LANES)])


def write_lines(path: Path, entries: list[Any]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def test_malformed_json_line_names_file_and_line(tmp_path):
    gt = write_lines(tmp_path / "gt.json", [gt_entry(FOUR_LANES)])
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(pred_entry(FOUR_LANES)) + "\n\n{\"raw_file\": \n")
    with pytest.raises(EvaluationError, match=r"pred\.json line 3: invalid JSON"):
        evaluate_files(pred, gt)


def test_file_errors_name_the_line_of_the_bad_record(tmp_path):
    names = [f"clips/a/{i}/20.jpg" for i in range(3)]
    gt = write_lines(tmp_path / "gt.json", [gt_entry(FOUR_LANES, raw_file=name) for name in names])
    preds = [pred_entry(FOUR_LANES, raw_file=name) for name in names]
    preds[2]["lanes"][0] = preds[2]["lanes"][0][:10]
    pred = write_lines(tmp_path / "pred.json", preds)
    with pytest.raises(EvaluationError, match=r"pred\.json line 3 \('clips/a/2/20\.jpg'\): lane 0 has 10 values"):
        evaluate_files(pred, gt)


def test_files_give_the_same_scores_as_the_reference(tmp_path):
    rng = np.random.default_rng(3)
    pairs = [random_image(rng, index) for index in range(50)]
    pred = write_lines(tmp_path / "pred.json", [p for p, _ in pairs])
    gt = write_lines(tmp_path / "gt.json", [g for _, g in pairs])
    fast = evaluate_files(pred, gt)
    slow = reference.evaluate_files(pred, gt)
    assert fast["images"] == 50
    assert all(math.isclose(fast[key], slow[key], abs_tol=1e-9) for key in ("accuracy", "fp", "fn"))


# --- the command line ----------------------------------------------------------------------


def run_lanex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LANEX), *args], capture_output=True, text=True, timeout=120)


def test_lanex_eval_json_prints_exactly_the_api_result(tmp_path):
    rng = np.random.default_rng(11)
    pairs = [random_image(rng, index) for index in range(30)]
    pred = write_lines(tmp_path / "pred.json", [p for p, _ in pairs])
    gt = write_lines(tmp_path / "gt.json", [g for _, g in pairs])
    result = run_lanex("eval", "--pred", str(pred), "--gt", str(gt), "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == evaluate_files(pred, gt)


def test_lanex_eval_exits_2_with_a_message_naming_the_missing_image(tmp_path):
    gt_entries = [gt_entry(FOUR_LANES), gt_entry(FOUR_LANES, raw_file="clips/z/9/20.jpg")]
    gt = write_lines(tmp_path / "gt.json", gt_entries)
    pred = write_lines(tmp_path / "pred.json", [pred_entry(FOUR_LANES)])
    result = run_lanex("eval", "--pred", str(pred), "--gt", str(gt), "--json")
    assert result.returncode == 2
    assert "clips/z/9/20.jpg" in result.stderr
    assert result.stdout.strip() == ""
