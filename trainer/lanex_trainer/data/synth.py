"""Synthetic road scenes written in the exact TuSimple layout.

The real TuSimple archives are no longer downloadable from their original place and are large, so
tests, demos and CI need a dataset that has the same files, the same label format and honest labels,
and that a small CNN can learn in minutes. Every clip is rendered from its own numpy Generator
derived from (seed, split, index), so the output is byte-identical for a seed whatever the number of
worker processes.

Geometry (image coordinates, y down): the road vanishes at (vanish_x + curvature, horizon_y). With
t = (y - horizon_y) / (bottom - horizon_y) in [0, 1], a lane whose x at the bottom row is `b` runs
along x(y) = vanish_x + (b - vanish_x) * t + curvature * (1 - t) ** 2. Lanes share the curvature
term, so they never cross, converge at the horizon and are straight when curvature is 0. The painted
marking at row y is centred on x(y) and its width grows with t (perspective); the TuSimple label at
each h_sample is round(x(y)), or -2 above the lane's visible top or where x leaves the image. Dashed
gaps keep their labels, as TuSimple annotators interpolate them.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

IMAGE_WIDTH = 1280
IMAGE_HEIGHT = 720
H_SAMPLES: tuple[int, ...] = tuple(range(160, 711, 10))
JPEG_QUALITY = 90
MANIFEST_NAME = "synth_manifest.json"
MANIFEST_FORMAT = 1
TEST_LABEL_FILE = "test_label.json"

# (label file, share of the training clips, clip date folders): the proportions of TuSimple's
# 3,626 training frames (0313: 2,858 in two folders, 0531: 358, 0601: 410 -> rounded to 68/10/22).
TRAIN_SPLITS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("label_data_0313.json", 0.68, ("0313-1", "0313-2")),
    ("label_data_0531.json", 0.10, ("0531",)),
    ("label_data_0601.json", 0.22, ("0601",)),
)
TEST_DATES: tuple[str, ...] = ("0530", "0531", "0601")

# Lane count distribution (TuSimple: mostly 4, some 3 and 5, few 2) and, per count, the lane
# slots in lane widths from the camera's centre line.
LANE_COUNT_PROBS: dict[int, float] = {2: 0.06, 3: 0.20, 4: 0.60, 5: 0.14}
LANE_SLOTS: dict[int, tuple[tuple[float, ...], ...]] = {
    2: ((-0.5, 0.5),),
    3: ((-1.5, -0.5, 0.5), (-0.5, 0.5, 1.5)),
    4: ((-1.5, -0.5, 0.5, 1.5),),
    5: ((-2.5, -1.5, -0.5, 0.5, 1.5), (-1.5, -0.5, 0.5, 1.5, 2.5)),
}
MIN_VALID_POINTS = 6
MAX_LAYOUT_DRAWS = 1000  # layouts are redrawn if a lane shows too few points (never seen in practice)
NOISE_MARGIN = 128
CHUNK_SIZE = 16


class SynthError(ValueError):
    """The output folder or the parameters do not allow generating the dataset."""


@dataclass(frozen=True)
class LaneSpec:
    """One painted lane marking; `bottom_x` is its x at the last image row (may be off-image)."""

    bottom_x: float
    top_y: float
    width_bottom: float
    color_bgr: tuple[int, int, int]
    dashed: bool
    dash_period: float
    dash_duty: float
    dash_phase: float


@dataclass(frozen=True)
class RoadSpec:
    """Scene geometry shared by all lanes of one image."""

    horizon_y: float
    vanish_x: float
    curvature: float
    lane_width: float
    left_edge_x: float
    right_edge_x: float
    lanes: tuple[LaneSpec, ...]


@dataclass(frozen=True)
class RenderedClip:
    """A rendered frame (BGR, as OpenCV writes it) with its TuSimple lanes and what hides them."""

    image: np.ndarray
    lanes: list[list[int]]
    road: RoadSpec
    occluders: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class ClipJob:
    """Where one clip goes: its label file, its random stream and its `raw_file`."""

    label_file: str
    stream: int
    index: int
    raw_file: str


# ---------------------------------------------------------------------------------------------
# Randomness


def clip_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The Generator of one clip; independent of how clips are spread over processes."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, stream, index]))


def noise_tile(seed: int) -> np.ndarray:
    """A Gaussian noise field larger than an image; each clip crops it at its own random offset.

    Drawing 0.9 M normals per image would cost half the time budget; cropping a shared tile keeps
    per-pixel Gaussian noise for ~1 ms and depends only on the seed.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**64, 0x6E6F697365]))
    shape = (IMAGE_HEIGHT + NOISE_MARGIN, IMAGE_WIDTH + NOISE_MARGIN)
    return rng.standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Geometry and labels


def depth_t(road: RoadSpec, y: np.ndarray) -> np.ndarray:
    """Perspective parameter t: 0 at the horizon, 1 at the bottom image row."""
    return (y - road.horizon_y) / (IMAGE_HEIGHT - 1 - road.horizon_y)


def curve_x(road: RoadSpec, bottom_x: float, y: np.ndarray) -> np.ndarray:
    """x of a road-parallel curve (lane marking or road edge) at rows y."""
    t = depth_t(road, y)
    return road.vanish_x + (bottom_x - road.vanish_x) * t + road.curvature * (1.0 - t) ** 2


def lane_labels(road: RoadSpec, h_samples: Sequence[int] = H_SAMPLES) -> list[list[int]]:
    """TuSimple `lanes`: round(x) at each h_sample, -2 above the lane top or outside the image."""
    ys = np.asarray(h_samples, dtype=np.float64)
    lanes = []
    for lane in road.lanes:
        xs = np.rint(curve_x(road, lane.bottom_x, ys)).astype(np.int64)
        valid = (ys >= lane.top_y) & (xs >= 0) & (xs < IMAGE_WIDTH)
        lanes.append(np.where(valid, xs, -2).tolist())
    return lanes


def _valid_count(lane: list[int]) -> int:
    return sum(1 for x in lane if x >= 0)


def _sample_lane(rng: np.random.Generator, bottom_x: float, top_y: float, leftmost: bool, outer: bool) -> LaneSpec:
    """Style of one marking: outer lines mostly solid, inner ones mostly dashed, yellow mostly on the left."""
    dashed = bool(rng.random() < (0.25 if outer else 0.6))
    yellow = bool(rng.random() < (0.3 if leftmost else 0.05))
    level = int(rng.integers(195, 250))
    color = (int(level * 0.2), int(level * 0.8), level) if yellow else (level, level, int(level * 0.98))
    return LaneSpec(
        bottom_x=bottom_x,
        top_y=top_y,
        width_bottom=float(rng.uniform(16.0, 30.0)),
        color_bgr=color,
        dashed=dashed,
        dash_period=float(rng.uniform(1.2, 2.2)),
        dash_duty=float(rng.uniform(0.3, 0.5)),
        dash_phase=float(rng.uniform(0.0, 1.0)),
    )


def sample_road(rng: np.random.Generator) -> RoadSpec:
    """Draw a scene whose every lane has enough visible points and is >= 150 px from its neighbour."""
    counts = list(LANE_COUNT_PROBS)
    count = int(rng.choice(counts, p=[LANE_COUNT_PROBS[c] for c in counts]))
    for _ in range(MAX_LAYOUT_DRAWS):
        horizon_y = float(rng.uniform(215.0, 285.0))
        vanish_x = float(rng.uniform(IMAGE_WIDTH / 2 - 140, IMAGE_WIDTH / 2 + 140))
        curvature = 0.0 if rng.random() < 0.4 else float(rng.choice([-1.0, 1.0]) * rng.uniform(60.0, 300.0))
        lane_width = float(rng.uniform(480.0, 760.0))
        offset = float(rng.uniform(-0.25, 0.25))
        options = LANE_SLOTS[count]
        slots = options[int(rng.integers(len(options)))]
        centre = IMAGE_WIDTH / 2 + offset * lane_width
        lanes = tuple(
            _sample_lane(
                rng,
                bottom_x=centre + slot * lane_width,
                top_y=horizon_y + float(rng.uniform(12.0, 50.0)),
                leftmost=slot == slots[0],
                outer=slot in (slots[0], slots[-1]),
            )
            for slot in slots
        )
        margin_left, margin_right = rng.uniform(0.3, 0.9, size=2)
        road = RoadSpec(
            horizon_y=horizon_y,
            vanish_x=vanish_x,
            curvature=curvature,
            lane_width=lane_width,
            left_edge_x=centre + (slots[0] - margin_left) * lane_width,
            right_edge_x=centre + (slots[-1] + margin_right) * lane_width,
            lanes=lanes,
        )
        if all(_valid_count(lane) >= MIN_VALID_POINTS for lane in lane_labels(road)):
            return road
    raise SynthError(
        f"no {count}-lane layout with {MIN_VALID_POINTS}+ visible points per lane in {MAX_LAYOUT_DRAWS} draws"
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def _row_gradient(top: np.ndarray, bottom: np.ndarray, rows: int) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    return (top[None, :] * (1.0 - ramp) + bottom[None, :] * ramp).astype(np.uint8)


def _background(rng: np.random.Generator, road: RoadSpec) -> np.ndarray:
    """Sky, a distant tree/hill band on the horizon, and the off-road ground."""
    horizon = int(round(road.horizon_y))
    sky_top = np.array([rng.uniform(150, 230), rng.uniform(110, 190), rng.uniform(80, 150)], np.float32)
    sky_low = np.minimum(sky_top + rng.uniform(20, 60), 250.0).astype(np.float32)
    ground_far = np.array([rng.uniform(60, 110), rng.uniform(90, 140), rng.uniform(70, 120)], np.float32)
    ground_near = ground_far * np.float32(rng.uniform(0.55, 0.85))
    rows = np.concatenate(
        [_row_gradient(sky_top, sky_low, horizon), _row_gradient(ground_far, ground_near, IMAGE_HEIGHT - horizon)]
    )
    image = cv2.resize(rows[:, None, :], (IMAGE_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_NEAREST)
    xs = np.linspace(0, IMAGE_WIDTH, 33)
    heights = road.horizon_y - np.abs(rng.normal(18.0, 14.0, size=xs.size))
    band = np.concatenate([np.stack([xs, heights], 1), [[IMAGE_WIDTH, road.horizon_y + 2], [0, road.horizon_y + 2]]])
    band_color = tuple(float(c) for c in rng.uniform(35, 95, size=3))
    cv2.fillPoly(image, [np.round(band * 16).astype(np.int32)], band_color, cv2.LINE_AA, shift=4)
    return image


def _road_surface(rng: np.random.Generator, road: RoadSpec, image: np.ndarray) -> None:
    """Asphalt between the road edges (its haze gradient comes with the gain map)."""
    ys = np.arange(road.horizon_y + 1.0, IMAGE_HEIGHT + 1.0, 4.0)
    left = curve_x(road, road.left_edge_x, ys)
    right = curve_x(road, road.right_edge_x, ys)
    polygon = np.concatenate([np.stack([left, ys], 1), np.stack([right, ys], 1)[::-1]])
    color = tuple(float(c) for c in np.clip(rng.uniform(70, 125) + rng.uniform(-6, 6, size=3), 0, 255))
    cv2.fillPoly(image, [np.round(polygon * 16).astype(np.int32)], color, cv2.LINE_AA, shift=4)


def _marking_runs(road: RoadSpec, lane: LaneSpec) -> Iterator[np.ndarray]:
    """Row samples (1 px apart) of each painted stretch: the whole lane, or one per dash."""
    ys = np.arange(lane.top_y, IMAGE_HEIGHT + 1.0, 1.0)
    if not lane.dashed:
        yield ys
        return
    depth = 1.0 / np.maximum(depth_t(road, ys), 1e-6)
    painted = np.mod(depth / lane.dash_period + lane.dash_phase, 1.0) < lane.dash_duty
    edges = np.flatnonzero(np.diff(np.concatenate([[0], painted.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        if stop - start >= 2:
            yield ys[start:stop]


def _draw_markings(road: RoadSpec, image: np.ndarray) -> None:
    """Each marking as a polygon centred on the lane curve, its width growing with t."""
    for lane in road.lanes:
        for ys in _marking_runs(road, lane):
            xs = curve_x(road, lane.bottom_x, ys)
            half = np.maximum(lane.width_bottom * depth_t(road, ys), 1.2) / 2.0
            polygon = np.concatenate([np.stack([xs - half, ys], 1), np.stack([xs + half, ys], 1)[::-1]])
            cv2.fillPoly(image, [np.round(polygon * 16).astype(np.int32)], lane.color_bgr, cv2.LINE_AA, shift=4)


def _draw_car(image: np.ndarray, centre: float, bottom: float, width: float, height: float, body: tuple) -> None:
    """A rear view: shadow ellipse, body, cabin, dark rear window, two wheels."""
    def box(x0: float, y0: float, x1: float, y1: float, color: tuple) -> None:
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), color, -1)

    left, right, top = centre - width / 2, centre + width / 2, bottom - height
    shadow_axes = (int(width * 0.6), max(int(height * 0.08), 2))
    cv2.ellipse(image, (int(centre), int(bottom)), shadow_axes, 0, 0, 360, (20, 20, 20), -1)
    box(left, top + height * 0.3, right, bottom - height * 0.08, body)
    box(left + width * 0.15, top, right - width * 0.15, top + height * 0.35, body)
    box(left + width * 0.2, top + height * 0.06, right - width * 0.2, top + height * 0.3, tuple(c * 0.35 for c in body))
    for wheel_x in (left + width * 0.05, right - width * 0.2):
        box(wheel_x, bottom - height * 0.12, wheel_x + width * 0.15, bottom, (15, 15, 15))


def _draw_cars(rng: np.random.Generator, road: RoadSpec, image: np.ndarray) -> tuple[tuple[int, int, int, int], ...]:
    """Car-like boxes standing on the road, sized by perspective, often straddling a marking.

    Returns each car's bounding box (x0, y0, x1, y1), shadow included: the markings it hides.
    """
    count = int(rng.choice([0, 1, 2], p=[0.7, 0.2, 0.1]))
    boxes = []
    for t in sorted(float(v) for v in rng.uniform(0.3, 0.9, size=count)):  # far cars first, nearer ones over them
        bottom = road.horizon_y + t * (IMAGE_HEIGHT - 1 - road.horizon_y)
        width = 0.75 * road.lane_width * t
        height = width * float(rng.uniform(0.55, 0.8))
        lane_pos = float(rng.uniform(-1.5, 1.5))
        centre = float(curve_x(road, IMAGE_WIDTH / 2 + lane_pos * road.lane_width, np.array([bottom]))[0])
        _draw_car(image, centre, bottom, width, height, tuple(float(c) for c in rng.uniform(20, 230, size=3)))
        reach = width * 0.6  # the shadow ellipse is wider than the body
        top, low = bottom - height, bottom + height * 0.08
        boxes.append((int(centre - reach) - 2, int(top) - 2, int(centre + reach) + 2, int(low) + 2))
    return tuple(boxes)


def _gain_map(rng: np.random.Generator, road: RoadSpec) -> np.ndarray:
    """Per-pixel brightness factor: global lighting, haze towards the horizon, polygonal shadows."""
    small_w, small_h = IMAGE_WIDTH // 8, IMAGE_HEIGHT // 8
    rows = np.arange(small_h, dtype=np.float32) * 8
    t = np.clip(depth_t(road, rows), 0.0, 1.0)
    haze = 1.0 + float(rng.uniform(0.1, 0.4)) * (1.0 - t) ** 2
    gain = np.repeat((float(rng.uniform(0.65, 1.25)) * haze)[:, None], small_w, axis=1).astype(np.float32)
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.5, 0.25, 0.15, 0.1]))):
        y0 = rng.uniform(road.horizon_y + 20, IMAGE_HEIGHT - 40) / 8
        band = rng.uniform(15, 160) / 8
        skew = rng.uniform(-60, 60, size=2) / 8
        x_a, x_b = sorted(rng.uniform(-20, small_w + 20, size=2))
        polygon = np.array(
            [[x_a, y0], [x_b, y0 + skew[0]], [x_b + skew[1], y0 + band + skew[0]], [x_a + skew[1], y0 + band]]
        )
        shade = np.zeros_like(gain)
        cv2.fillPoly(shade, [np.round(polygon * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
        gain *= 1.0 - float(rng.uniform(0.25, 0.55)) * shade
    gain = cv2.GaussianBlur(gain, (0, 0), 1.0)
    return cv2.resize(gain, (IMAGE_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_LINEAR)


def _texture_field(rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """Additive luminance: low-frequency blotches plus per-pixel Gaussian sensor noise."""
    blotches = rng.standard_normal((IMAGE_HEIGHT // 16, IMAGE_WIDTH // 16), dtype=np.float32)
    field = cv2.resize(blotches, (IMAGE_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_LINEAR)
    dy, dx = (int(v) for v in rng.integers(0, NOISE_MARGIN + 1, size=2))
    crop = noise[dy : dy + IMAGE_HEIGHT, dx : dx + IMAGE_WIDTH]
    return cv2.addWeighted(field, float(rng.uniform(3.0, 8.0)), crop, float(rng.uniform(2.0, 7.0)), 0.0)


def _apply_luma(image: np.ndarray, gain: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Y' = Y * gain + field on the luma channel only (a third of the work of doing it in BGR)."""
    ycrcb = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)
    luma = cv2.multiply(ycrcb[..., 0], gain, dtype=cv2.CV_32F)
    ycrcb[..., 0] = cv2.convertScaleAbs(cv2.add(luma, field))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def render_clip(seed: int, stream: int, index: int, noise: np.ndarray | None = None) -> RenderedClip:
    """Render clip `index` of random `stream` (0 train, 1 test) with its labels."""
    rng = clip_rng(seed, stream, index)
    road = sample_road(rng)
    image = _background(rng, road)
    _road_surface(rng, road, image)
    _draw_markings(road, image)
    occluders = _draw_cars(rng, road, image)
    gain = _gain_map(rng, road)
    field = _texture_field(rng, noise_tile(seed) if noise is None else noise)
    return RenderedClip(image=_apply_luma(image, gain, field), lanes=lane_labels(road), road=road, occluders=occluders)


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a BGR image at the dataset's quality."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise SynthError("OpenCV failed to encode a JPEG")
    return buffer.tobytes()


# ---------------------------------------------------------------------------------------------
# Dataset layout


def split_counts(clips: int) -> dict[str, int]:
    """Training clips per label file, TuSimple-like proportions, at least one each."""
    if clips < len(TRAIN_SPLITS):
        raise SynthError(f"clips={clips}: need at least {len(TRAIN_SPLITS)} (one per TuSimple label file)")
    counts = {name: max(1, round(share * clips)) for name, share, _ in TRAIN_SPLITS[1:]}
    first = TRAIN_SPLITS[0][0]
    return {first: clips - sum(counts.values()), **counts}  # >= 1: the other shares sum to 0.32


def plan_clips(clips: int, test_clips: int) -> list[ClipJob]:
    """Every clip's label file, random stream/index and image path, in label-file order."""
    jobs = []
    index = 0
    for name, _, dates in TRAIN_SPLITS:
        for position in range(split_counts(clips)[name]):
            date = dates[position % len(dates)]
            clip_id = str(60 * (index + 1)) if date.startswith("0313") else str(1492626047222176976 + 7919 * index)
            jobs.append(ClipJob(name, 0, index, f"clips/{date}/{clip_id}/20.jpg"))
            index += 1
    for index in range(test_clips):
        date = TEST_DATES[index % len(TEST_DATES)]
        jobs.append(ClipJob(TEST_LABEL_FILE, 1, index, f"clips/{date}/{1494452381594376146 + 7919 * index}_0/20.jpg"))
    return jobs


def _render_chunk(out: str, seed: int, jobs: Sequence[ClipJob]) -> list[tuple[str, int, float]]:
    """Worker: render and write a chunk of clips; return (label line, lane count, ms) per clip.

    OpenCV runs single-threaded here (processes give the parallelism); the caller's setting is
    restored because the serial path runs in the caller's process.
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        noise = noise_tile(seed)
        results = []
        for job in jobs:
            start = time.perf_counter()
            clip = render_clip(seed, job.stream, job.index, noise)
            path = Path(out) / job.raw_file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_jpeg(clip.image))
            elapsed_ms = (time.perf_counter() - start) * 1e3
            line = json.dumps({"lanes": clip.lanes, "h_samples": list(H_SAMPLES), "raw_file": job.raw_file})
            results.append((line, len(clip.lanes), elapsed_ms))
        return results
    finally:
        cv2.setNumThreads(threads)


def _chunks(jobs: Sequence[ClipJob], size: int) -> list[Sequence[ClipJob]]:
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _check_output(out: Path, parameters: dict) -> dict | None:
    """The stored summary if `out` already holds this exact dataset; refuse foreign contents."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.is_file():
        raise SynthError(f"{out} is not empty and has no {MANIFEST_NAME}: refusing to write a synthetic dataset there")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise SynthError(f"{manifest_path}: unreadable ({error}); delete {out} to regenerate") from error
    if manifest.get("parameters") != parameters:
        raise SynthError(
            f"{out} holds a synthetic dataset made with {manifest.get('parameters')}, not {parameters}; "
            "use another --out or delete it"
        )
    return manifest.get("summary") if manifest.get("complete") else None


def _workers_for(chunks: int, workers: int | None) -> int:
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    return max(1, min(workers, chunks))


def _render_all(out: Path, seed: int, jobs: list[ClipJob], workers: int | None) -> tuple[list, int]:
    """Render and write every clip, in chunks spread over processes; results in job order."""
    chunks = _chunks(jobs, CHUNK_SIZE)
    pool_size = _workers_for(len(chunks), workers)
    if pool_size == 1:
        results = [_render_chunk(str(out), seed, chunk) for chunk in chunks]
    else:
        with ProcessPoolExecutor(max_workers=pool_size) as pool:
            results = list(pool.map(_render_chunk, [str(out)] * len(chunks), [seed] * len(chunks), chunks))
    return [result for chunk in results for result in chunk], pool_size


def _write_labels(out: Path, jobs: list[ClipJob], results: list) -> tuple[dict[str, int], dict[str, int]]:
    """Write the four label files; return lines per file and the lane-count histogram."""
    lines: dict[str, list[str]] = {name: [] for name, _, _ in TRAIN_SPLITS}
    lines[TEST_LABEL_FILE] = []
    histogram: dict[str, int] = {}
    for job, (line, lane_count, _) in zip(jobs, results):
        lines[job.label_file].append(line)
        histogram[str(lane_count)] = histogram.get(str(lane_count), 0) + 1
    for name, file_lines in lines.items():
        _write_atomic(out / name, "".join(f"{line}\n" for line in file_lines))
    return {name: len(file_lines) for name, file_lines in lines.items()}, dict(sorted(histogram.items()))


def generate_dataset(
    out: Path, clips: int, test_clips: int | None, seed: int, *, workers: int | None = None
) -> dict:
    """Write `clips` training and `test_clips` (default clips // 4) test clips under `out`.

    Returns a JSON-serialisable summary: lines per label file, lane-count histogram, wall seconds
    and mean milliseconds per image (render + encode + write, in its worker). Idempotent: a
    finished dataset with the same parameters is left as it is and its summary is returned with
    `"reused": true`. Raises SynthError for bad counts or a non-empty `out` holding anything else.
    """
    out = Path(out)
    test_clips = max(1, clips // 4) if test_clips is None else test_clips
    if test_clips < 1:
        raise SynthError(f"test_clips={test_clips}: need at least 1")
    split_counts(clips)
    parameters = {"format": MANIFEST_FORMAT, "clips": clips, "test_clips": test_clips, "seed": seed}
    stored = _check_output(out, parameters)
    if stored is not None:
        return {**stored, "reused": True}

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / MANIFEST_NAME, json.dumps({"parameters": parameters, "complete": False}, indent=2))
    jobs = plan_clips(clips, test_clips)
    results, pool_size = _render_all(out, seed, jobs, workers)
    label_files, histogram = _write_labels(out, jobs, results)
    summary = {
        "out": str(out),
        "seed": seed,
        "label_files": label_files,
        "lanes_histogram": histogram,
        "images": len(jobs),
        "workers": pool_size,
        "seconds": round(time.perf_counter() - start, 3),
        "ms_per_image": round(float(np.mean([elapsed for _, _, elapsed in results])), 2),
        "reused": False,
    }
    manifest = {"parameters": parameters, "complete": True, "summary": summary}
    _write_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=2))
    return summary
