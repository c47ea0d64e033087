"""Time `lanex eval` (the vectorised TuSimple metric) against the plain official-style loop.

Why it exists: the official script fits one scikit-learn regression per lane (about a millisecond
per image); validation and `lanex eval` should cost far less while giving the same numbers. This
writes a seeded synthetic test set the size of TuSimple's (2,782 images, 4-5 lanes, annotation
holes, noisy integer predictions with misses and spurious lanes), scores it both ways from the
JSON files, checks the scores are identical and prints median times and the speed-up.

Run: ``python benchmarks/bench_eval.py [--images N] [--fast-runs K] [--reference-runs K]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS_160 = list(range(160, 720, 10))
ROWS_240 = list(range(240, 720, 10))


def synthetic_lane(rng: np.random.Generator, rows: list[int], base_x: float) -> np.ndarray:
    """A road lane in image coordinates: converging towards the horizon, cut where it leaves."""
    ys = np.asarray(rows, dtype=float)
    depth = (ys - 160.0) / 560.0
    x = 640.0 + (base_x - 640.0) * depth + rng.normal(0, 30) * depth**2
    x = np.round(x)
    x[(x < 0) | (x >= 1280)] = -2
    x[: rng.integers(2, 12)] = -2  # the annotation starts a little below the horizon
    if rng.random() < 0.3:  # an occluded stretch
        start = rng.integers(10, len(rows) - 5)
        x[start : start + rng.integers(2, 8)] = -2
    return x


def synthetic_pair(rng: np.random.Generator, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rows = ROWS_160 if rng.random() < 0.9 else ROWS_240
    count = int(rng.choice([4, 4, 4, 5, 5, 3]))
    bases = np.sort(rng.uniform(-900, 2200, count))
    gt = [synthetic_lane(rng, rows, base) for base in bases]
    pred = []
    for lane in gt:
        if rng.random() < 0.06:
            continue  # a missed lane
        bias, spread = rng.normal(0, 4), rng.uniform(2, 12)
        noisy = np.where(lane >= 0, np.round(lane + rng.normal(bias, spread, len(lane))), -2)
        noisy[rng.random(len(lane)) < 0.05] = -2
        pred.append(noisy)
    if rng.random() < 0.08:
        pred.append(synthetic_lane(rng, rows, rng.uniform(-900, 2200)))  # a spurious lane
    raw_file = f"clips/0530/{index:05d}/20.jpg"
    run_time = float(np.round(rng.uniform(3, 20), 2))
    prediction = {"raw_file": raw_file, "lanes": [lane.astype(int).tolist() for lane in pred], "run_time": run_time}
    truth = {"raw_file": raw_file, "lanes": [lane.astype(int).tolist() for lane in gt], "h_samples": rows}
    return prediction, truth


def write_dataset(directory: Path, images: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    pairs = [synthetic_pair(rng, index) for index in range(images)]
    order = rng.permutation(images)  # predictions in another order than the ground truth
    pred_path, gt_path = directory / "pred.json", directory / "test_label.json"
    pred_path.write_text("".join(json.dumps(pairs[i][0]) + "\n" for i in order))
    gt_path.write_text("".join(json.dumps(truth) + "\n" for _, truth in pairs))
    return pred_path, gt_path


def median_ms(function: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2782, help="images in the synthetic test set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--fast-runs", type=int, default=9, help="timed runs of the fast metric")
    parser.add_argument("--reference-runs", type=int, default=3, help="timed runs of the reference loop")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "trainer"))
    sys.path.insert(0, str(ROOT / "tests"))
    import tusimple_reference as reference  # the plain sklearn loop
    from lanex_trainer.evaluation.tusimple import evaluate, evaluate_files, load_json_lines

    with tempfile.TemporaryDirectory() as folder:
        pred_path, gt_path = write_dataset(Path(folder), args.images, args.seed)
        predictions, _ = load_json_lines(pred_path)
        ground_truth, _ = load_json_lines(gt_path)
        evaluate_files(pred_path, gt_path)  # warm-up: imports, allocator
        fast_ms, fast = median_ms(lambda: evaluate_files(pred_path, gt_path), args.fast_runs)
        memory_ms, in_memory = median_ms(lambda: evaluate(predictions, ground_truth), args.fast_runs)
        reference_ms, slow = median_ms(lambda: reference.evaluate_files(pred_path, gt_path), args.reference_runs)

    keys = ("accuracy", "fp", "fn")
    worst = max(max(abs(fast[key] - slow[key]), abs(in_memory[key] - slow[key])) for key in keys)
    identical = worst <= 1e-9
    speedup = reference_ms / fast_ms
    per_image = 1000.0 / args.images
    print(f"images: {args.images}  seed: {args.seed}")
    print("scores fast:      " + "  ".join(f"{key} {fast[key]:.12f}" for key in keys))
    print("scores reference: " + "  ".join(f"{key} {slow[key]:.12f}" for key in keys))
    print(f"largest difference: {worst:.3g} ({'equal' if identical else 'DIFFERENT'} to 1e-9)")
    for label, runs, milliseconds in (
        ("evaluate_files, fast", args.fast_runs, fast_ms),
        ("evaluate in memory", args.fast_runs, memory_ms),
        ("reference loop, files", args.reference_runs, reference_ms),
    ):
        name = f"{label} (median of {runs}):"
        print(f"{name:38s} {milliseconds:9.1f} ms  {milliseconds * per_image:8.1f} us/image")
    print(
        f"SUMMARY tusimple-eval images={args.images} fast_ms={fast_ms:.1f} reference_ms={reference_ms:.1f} "
        f"speedup={speedup:.1f}x equal_to_1e-9={identical}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
