"""A plain restatement of the official TuSimple lane metric, used as the oracle in tests.

Why it exists: `lanex_trainer.evaluation.tusimple` is vectorised and fits slopes in closed form;
this file does it the slow, obvious way of the official ``evaluate/lane.py`` (one scikit-learn
``LinearRegression`` fit on (y -> x) per ground-truth lane, Python loops over lanes), so that any
divergence in the fast code shows up as a number that differs. It shares no code with the fast one.

Matching rules for files are the ones `lanex eval` documents: every ground-truth image needs a
prediction, predictions of unknown images are ignored; errors are plain ``ValueError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression


def lane_angle(xs: np.ndarray, ys: np.ndarray) -> float:
    """Angle of the least-squares line x = k*y + b through the points with x >= 0 (0 if < 2)."""
    keep = xs >= 0
    xs, ys = xs[keep], ys[keep]
    if len(xs) > 1:
        regression = LinearRegression()
        regression.fit(ys[:, None], xs)
        return np.arctan(regression.coef_[0])
    return 0


def line_accuracy(pred: np.ndarray, gt: np.ndarray, thresh: float) -> float:
    """Share of rows where |pred - gt| < thresh, every negative x on both sides set to -100."""
    pred = np.array([p if p >= 0 else -100 for p in pred])
    gt = np.array([g if g >= 0 else -100 for g in gt])
    return np.sum(np.where(np.abs(pred - gt) < thresh, 1.0, 0.0)) / len(gt)


def bench(pred: list[list[float]], gt: list[list[float]], y_samples: list[float], run_time: float) -> tuple:
    """(accuracy, fp rate, fn rate) of one image, following the official rules step by step."""
    for index, lane in enumerate(pred):
        if len(lane) != len(y_samples):
            raise ValueError(f"lane {index} has {len(lane)} points, expected {len(y_samples)}")
    if run_time > 200 or len(gt) + 2 < len(pred):
        return 0.0, 0.0, 1.0
    angles = [lane_angle(np.array(x_gts), np.array(y_samples)) for x_gts in gt]
    threshs = [20 / np.cos(angle) for angle in angles]
    line_accs = []
    fn = 0.0
    matched = 0.0
    for x_gts, thresh in zip(gt, threshs):
        accs = [line_accuracy(np.array(x_preds), np.array(x_gts), thresh) for x_preds in pred]
        max_acc = np.max(accs) if len(accs) > 0 else 0.0
        if max_acc < 0.85:
            fn += 1
        else:
            matched += 1
        line_accs.append(max_acc)
    fp = len(pred) - matched
    if len(gt) > 4 and fn > 0:
        fn -= 1
    s = sum(line_accs)
    if len(gt) > 4:
        s -= min(line_accs)
    accuracy = s / max(min(4.0, len(gt)), 1.0)
    fp_rate = fp / len(pred) if len(pred) > 0 else 0.0
    fn_rate = fn / max(min(len(gt), 4.0), 1.0)
    return float(accuracy), float(fp_rate), float(fn_rate)


def evaluate(predictions: list[dict[str, Any]], ground_truth: list[dict[str, Any]]) -> dict[str, float]:
    """Dataset means over the ground-truth images."""
    preds = {entry["raw_file"]: entry for entry in predictions}
    accuracy = fp = fn = 0.0
    for gt in ground_truth:
        if gt["raw_file"] not in preds:
            raise ValueError(f"no prediction for {gt['raw_file']}")
        pred = preds[gt["raw_file"]]
        a, p, n = bench(pred["lanes"], gt["lanes"], gt["h_samples"], pred["run_time"])
        accuracy += a
        fp += p
        fn += n
    count = len(ground_truth)
    return {"accuracy": accuracy / count, "fp": fp / count, "fn": fn / count}


def evaluate_files(pred_path: str | Path, gt_path: str | Path) -> dict[str, float]:
    """`evaluate` on two JSON-lines files, read the way the official script reads them."""
    with open(pred_path) as handle:
        predictions = [json.loads(line) for line in handle if line.strip()]
    with open(gt_path) as handle:
        ground_truth = [json.loads(line) for line in handle if line.strip()]
    return evaluate(predictions, ground_truth)
