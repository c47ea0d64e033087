"""The pictures people look at after a run: lane overlays and a contact sheet of the worst test images.

Why it exists: a TuSimple accuracy of 0.93 says nothing about *which* scenes fail. An overlay draws
the ground truth (thin, one colour) over the predicted lanes (one colour per lane slot) with the
image's own TuSimple accuracy/FP/FN in a corner; `worst.png` tiles the test images with the lowest
accuracy (ties: most FP+FN first), so the failures are one look away, next to `curves.png`.
Text is drawn after any resizing, so it stays legible on the small tiles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

LANE_COLOURS = [(255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 220, 0)]  # prediction slot 1..4, RGB
GROUND_TRUTH_COLOUR = (255, 0, 255)  # magenta: unlike road paint and every prediction colour
WORST_SHEET = "worst.png"
WORST_INDEX = "worst.json"
WORST_IMAGES = 9
TILE_WIDTH = 480  # TuSimple's 1280x720 at 3/8: three tiles side by side fit a laptop screen


def _bgr(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return rgb[2], rgb[1], rgb[0]


def _polyline(image: np.ndarray, lane: Sequence[int], h_samples: Sequence[int], colour, thickness: int,
              dots: int) -> None:
    import cv2

    points = [(int(x), int(y)) for x, y in zip(lane, h_samples) if x >= 0]
    for start, end in zip(points, points[1:]):
        cv2.line(image, start, end, colour, thickness, cv2.LINE_AA)
    if dots:
        for point in points:
            cv2.circle(image, point, dots, colour, -1, cv2.LINE_AA)


def draw_lanes(image: np.ndarray, lanes: Sequence[Sequence[int]], h_samples: Sequence[int],
               ground_truth: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """A copy of a BGR image with the predicted lanes (thick, per slot) and the ground truth over them
    (thin, magenta): where a prediction is right, the magenta line runs inside its band."""
    canvas = image.copy()
    for slot, lane in enumerate(lanes):
        _polyline(canvas, lane, h_samples, _bgr(LANE_COLOURS[slot % len(LANE_COLOURS)]), 4, 5)
    for lane in ground_truth or []:
        _polyline(canvas, lane, h_samples, _bgr(GROUND_TRUTH_COLOUR), 2, 0)
    return canvas


def score_text(scores: dict) -> str:
    return f"acc {scores['accuracy']:.3f}  FP {scores['fp']:.2f}  FN {scores['fn']:.2f}"


def label(image: np.ndarray, lines: Sequence[str], corner: str = "top-left") -> None:
    """White text on a dark box in a corner, sized to the image (about 1/24 of its height per line)."""
    import cv2

    height, width = image.shape[:2]
    scale = max(0.4, height / 720 * 1.1)
    thickness = max(1, round(scale * 2))
    pad = max(4, round(8 * scale))
    sizes = [cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0] for line in lines]
    line_height = max(h for _, h in sizes) + pad
    box_w = max(w for w, _ in sizes) + 2 * pad
    box_h = line_height * len(lines) + pad
    x0 = 0 if corner.endswith("left") else width - box_w
    y0 = 0 if corner.startswith("top") else height - box_h
    region = image[y0:y0 + box_h, x0:x0 + box_w]
    region[:] = (region * 0.35).astype(image.dtype)  # darken, keep a hint of the scene
    for i, line in enumerate(lines):
        baseline = y0 + pad + line_height * i + sizes[i][1]
        cv2.putText(image, line, (x0 + pad, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)


def draw_overlay(path: Path, lanes: Sequence[Sequence[int]], h_samples: Sequence[int], out: Path,
                 ground_truth: Optional[Sequence[Sequence[int]]] = None, scores: Optional[dict] = None) -> None:
    """Write `path` with its lanes drawn (and, for labelled images, the ground truth and its scores)."""
    import cv2

    image = draw_lanes(cv2.imread(str(path), cv2.IMREAD_COLOR), lanes, h_samples, ground_truth)
    if scores is not None:
        label(image, [score_text(scores)])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), image)


def worst_first(scored: Sequence[dict], count: int = WORST_IMAGES) -> list[dict]:
    """The `count` lowest-accuracy images (ties: most FP+FN first, then test order)."""
    order = sorted(range(len(scored)), key=lambda i: (scored[i]["accuracy"], -(scored[i]["fp"] + scored[i]["fn"]), i))
    return [scored[i] for i in order[:count]]


def write_worst_sheet(images: Sequence[dict], data_root: Path, out_dir: Path, columns: int = 3) -> Optional[Path]:
    """`worst.png` (tiles, worst first, row by row) and `worst.json` (what each tile shows).

    Each of `images` has image (path under data_root), raw_file, h_samples, lanes (predicted),
    gt_lanes, accuracy, fp, fn.
    """
    import cv2

    if not images:
        return None
    tiles = []
    for rank, item in enumerate(images, start=1):
        image = draw_lanes(cv2.imread(str(data_root / item["image"]), cv2.IMREAD_COLOR), item["lanes"],
                           item["h_samples"], item["gt_lanes"])
        height, width = image.shape[:2]
        tile = cv2.resize(image, (TILE_WIDTH, round(height * TILE_WIDTH / width)), interpolation=cv2.INTER_AREA)
        label(tile, [f"#{rank} {score_text(item)}"])
        label(tile, [item["raw_file"]], corner="bottom-left")
        tiles.append(tile)
    tile_h = max(t.shape[0] for t in tiles)
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    gap, header = 4, 36
    sheet = np.full((header + rows * (tile_h + gap), columns * (TILE_WIDTH + gap) - gap, 3), 32, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y, x = header + (i // columns) * (tile_h + gap), (i % columns) * (TILE_WIDTH + gap)
        sheet[y:y + tile.shape[0], x:x + TILE_WIDTH] = tile
    cv2.putText(sheet, "worst test images, lowest accuracy first  (thin magenta: ground truth; thick: prediction)",
                (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WORST_SHEET
    cv2.imwrite(str(path), sheet)
    (out_dir / WORST_INDEX).write_text(json.dumps(
        [{"rank": rank, "raw_file": item["raw_file"], "accuracy": item["accuracy"], "fp": item["fp"], "fn": item["fn"]}
         for rank, item in enumerate(images, start=1)], indent=1))
    return path
