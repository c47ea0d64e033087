"""Time the synthetic TuSimple generator: one image on one core, and a whole demo-sized dataset.

The demo generates ~300 clips before training, so rendering must stay well under 30 ms per
1280x720 image (render + JPEG encode) on a single core.

    python benchmarks/bench_synth.py --images 100 --clips 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from lanex_trainer.data.synth import encode_jpeg, generate_dataset, noise_tile, render_clip


def time_single_core(images: int, seed: int) -> dict:
    """Per-image wall times (ms) of render and encode on one OpenCV thread, and CPU time per image.

    CPU time is the figure to compare across runs on a shared machine: wall time includes waiting
    for cores that other processes hold.
    """
    cv2.setNumThreads(1)
    noise = noise_tile(seed)
    render_ms, encode_ms = [], []
    cpu_start = time.process_time()
    for index in range(images):
        start = time.perf_counter()
        clip = render_clip(seed, 0, index, noise)
        rendered = time.perf_counter()
        encode_jpeg(clip.image)
        render_ms.append((rendered - start) * 1e3)
        encode_ms.append((time.perf_counter() - rendered) * 1e3)
    cpu_ms = (time.process_time() - cpu_start) * 1e3 / images
    total = [r + e for r, e in zip(render_ms, encode_ms)]
    return {
        "images": images,
        "cpu_ms_mean": round(cpu_ms, 2),
        "render_ms_median": round(statistics.median(render_ms), 2),
        "encode_ms_median": round(statistics.median(encode_ms), 2),
        "total_ms_median": round(statistics.median(total), 2),
        "total_ms_p90": round(sorted(total)[int(0.9 * (len(total) - 1))], 2),
    }


def time_dataset(clips: int, seed: int, workers: int | None) -> dict:
    """Wall time of `generate_dataset` (writing files included) into a temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        summary = generate_dataset(root / "tusimple", clips=clips, test_clips=None, seed=seed, workers=workers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {key: summary[key] for key in ("images", "workers", "seconds", "ms_per_image", "lanes_histogram")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="images timed on one core")
    parser.add_argument("--clips", type=int, default=300, help="training clips of the timed dataset (0 to skip)")
    parser.add_argument("--workers", type=int, default=None, help="processes for the dataset (default: CPUs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    report = {"single_core": time_single_core(args.images, args.seed)}
    if args.clips:
        report["dataset"] = time_dataset(args.clips, args.seed, args.workers)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
