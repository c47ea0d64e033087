"""Data-pipeline throughput of one loader worker: is JPEG -> (image, seg, exist) fast enough?

SCNN at 288x800 on a modern GPU consumes a few hundred images/s, so each DataLoader worker (one
CPU core) should deliver >= 100 images/s with augmentation. This builds a small synthetic set in
the TuSimple layout (`lanex data synth`), prepares it, and times `LaneDataset.__getitem__` in a
single process with one thread: median images/s over several passes, and where the time goes
(decode / geometry / targets / tensor), at 288x800 and 144x400.

    python benchmarks/bench_data.py [--images 64] [--passes 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_IMAGES_PER_S = 100.0
SIZES = ((288, 800), (144, 400))


def build_dataset(root: Path, images: int) -> list[dict[str, Any]]:
    """Synthesise `images` training clips and return the prepared training entries."""
    from lanex_trainer.data.prepare import load_index, prepare_dataset
    from lanex_trainer.data.synth import TRAIN_SPLITS, generate_dataset

    generate_dataset(root, clips=images, test_clips=1, seed=0)
    prepare_dataset(root, train_files=[name for name, _, _ in TRAIN_SPLITS], val_files=[], test_files=[])
    return load_index(root, "train")


def images_per_second(dataset: Any, passes: int) -> tuple[list[float], list[float]]:
    """One full pass over the dataset per measurement (a new epoch each, as in training).

    Returns rates per wall-clock second and per CPU second of this process: on a shared machine
    the second one is what one dedicated core would deliver (time spent descheduled is excluded).
    """
    wall_rates, cpu_rates = [], []
    for epoch in range(passes):
        dataset.set_epoch(epoch)
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(len(dataset)):
            dataset[index]
        wall_rates.append(len(dataset) / (time.perf_counter() - wall))
        cpu_rates.append(len(dataset) / (time.process_time() - cpu))
    return wall_rates, cpu_rates


def stage_split(dataset: Any) -> dict[str, float]:
    """CPU milliseconds per image in each stage, replaying `__getitem__` step by step."""
    import torch

    from lanex_trainer.data import dataset as ds
    from lanex_trainer.data.labels import assign_slots

    totals = {"decode": 0.0, "geometry": 0.0, "targets": 0.0, "tensor": 0.0}
    for index, entry in enumerate(dataset.entries):
        t0 = time.process_time()
        size = (entry["width"], entry["height"])
        image, factor = ds.decode_bgr(dataset.root / entry["image"], dataset.height, dataset.width, size)
        t1 = time.process_time()
        draw = ds.random_draw(dataset.rng(index), dataset.augment_config, dataset.width, dataset.height)
        matrix = ds.affine_matrix(draw, dataset.width / size[0], dataset.height / size[1], dataset.width, dataset.height)
        image = ds.resample(image, factor, matrix, draw, dataset.height, dataset.width)
        t2 = time.process_time()
        slots = assign_slots(entry["lanes"], entry["h_samples"], image_width=size[0])
        thickness = max(1, round(dataset.lane_width_px * dataset.width / ds.TUSIMPLE_WIDTH * draw.scale))
        seg = ds.draw_targets(slots, entry["h_samples"], matrix, dataset.height, dataset.width, thickness)
        t3 = time.process_time()
        ds.to_tensor(image, draw), torch.from_numpy(seg).long()
        t4 = time.process_time()
        for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[name] += seconds
    return {name: round(1000.0 * seconds / len(dataset.entries), 3) for name, seconds in totals.items()}


def run(images: int, passes: int) -> dict[str, Any]:
    import cv2
    import torch

    from lanex_trainer.data.dataset import LaneDataset

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results: dict[str, Any] = {"images": images, "passes": passes, "goal_images_per_s": GOAL_IMAGES_PER_S}
    with tempfile.TemporaryDirectory(prefix="lanex-bench-data-") as tmp:
        entries = build_dataset(Path(tmp), images)
        results["images"] = len(entries)
        for height, width in SIZES:
            for augment in (True, False):
                dataset = LaneDataset(entries, Path(tmp), height, width, augment=augment, seed=0)
                dataset[0]  # warm caches and lazy imports outside the timing
                rates, cpu_rates = images_per_second(dataset, passes)
                key = f"{height}x{width}" + ("_augment" if augment else "")
                results[key] = {
                    "images_per_s_median": round(statistics.median(rates), 1),
                    "images_per_cpu_s_median": round(statistics.median(cpu_rates), 1),
                    "images_per_s_passes": [round(rate, 1) for rate in rates],
                }
                if augment:
                    results[key]["ms_per_stage"] = stage_split(dataset)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="Synthetic training images to time over.")
    parser.add_argument("--passes", type=int, default=5, help="Timed passes per configuration (median reported).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    results = run(args.images, args.passes)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    main = results["288x800_augment"]
    verdict = "meets" if main["images_per_s_median"] >= GOAL_IMAGES_PER_S else "below"
    small = results["144x400_augment"]
    print(
        f"bench_data: one worker with augment: 288x800 {main['images_per_s_median']} img/s "
        f"({main['images_per_cpu_s_median']} per CPU-s; {verdict} goal {GOAL_IMAGES_PER_S:.0f}), "
        f"144x400 {small['images_per_s_median']} img/s ({small['images_per_cpu_s_median']} per CPU-s); "
        f"without augment 288x800 {results['288x800']['images_per_s_median']}, 144x400 {results['144x400']['images_per_s_median']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
