"""The SCNN training dataset: JPEG in, normalised image + lane segmentation target + existence out.

Data loading, not the GPU, is what usually starves lane-detection training, so one item costs one
reduced-size JPEG decode, one resampling pass and one lookup-table pass:

1. decode with libjpeg DCT scaling (OpenCV `IMREAD_REDUCED_COLOR_{2,4,8}`), choosing the largest
   reduction whose result is still at least the output size;
2. resize and augment in one step: the resize and the random scale/rotation/translation are
   composed into one affine matrix and applied with a single `cv2.warpAffine` (bilinear). Without
   augmentation this is a plain `cv2.resize`, which samples the same pixels;
3. the targets are drawn directly in output space: each slot's lane is mapped through the same
   matrix and drawn with `cv2.polylines` (sub-pixel coordinates). This is the same geometry as
   drawing at 1280x720 and warping with nearest-neighbour, but exact and cheaper;
4. colour jitter, BGR->RGB and ImageNet normalisation are folded into one float lookup table per
   channel, written straight into the [3, H, W] float32 output.

Randomness is a numpy Generator seeded from (seed, epoch, index), so an item is the same whatever
the number of DataLoader workers or processes, and differs from epoch to epoch (`set_epoch`).
Horizontal flip (off by default, `AugmentConfig.horizontal_flip`): the decoded image is mirrored and
so are the label x values, and the slots are assigned again on the mirrored lanes, so the lane left
of the car becomes the one right of it (slot 2 <-> 3, 1 <-> 4), as it is in a mirrored scene.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch

from lanex_trainer.data.labels import assign_slots, valid_points

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TUSIMPLE_WIDTH = 1280
_SUBPIXEL_BITS = 4
"""cv2.polylines fixed-point shift: lane points keep 1/16 pixel precision."""


class DecodeError(ValueError):
    """An image file that is missing, unreadable or truncated; the message names the path."""


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the training augmentation; every draw is uniform in [-r, r] (or the given interval)."""

    rotation_deg: float = 3.0
    """Rotation about the image centre, degrees. Small: lanes keep their left/right order."""
    scale: tuple[float, float] = (0.92, 1.08)
    """Zoom factor range (>1 zooms in)."""
    translate: tuple[float, float] = (0.04, 0.04)
    """Shift as a fraction of output (width, height)."""
    brightness: float = 0.25
    """Multiplicative brightness factor 1 +- r."""
    contrast: float = 0.25
    """Contrast factor 1 +- r about the image's mean grey level."""
    color: float = 0.08
    """Per-channel gain 1 +- r (colour cast / white balance)."""
    horizontal_flip: bool = False
    """Mirror half the images (lane slots swapped to match)."""


@dataclass(frozen=True)
class Draw:
    """One item's random draw: the geometric matrix parts and the photometric factors."""

    angle_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    brightness: float = 1.0
    contrast: float = 1.0
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # R, G, B
    flip: bool = False  # mirror left-right before everything else

    @property
    def geometric(self) -> bool:
        return self.angle_deg != 0.0 or self.scale != 1.0 or self.shift != (0.0, 0.0)


def random_draw(rng: np.random.Generator, config: AugmentConfig, width: int, height: int) -> Draw:
    """Draw one item's augmentation; always the same number of draws, in the same order."""
    return Draw(
        angle_deg=float(rng.uniform(-config.rotation_deg, config.rotation_deg)),
        scale=float(rng.uniform(*config.scale)),
        shift=(
            float(rng.uniform(-config.translate[0], config.translate[0]) * width),
            float(rng.uniform(-config.translate[1], config.translate[1]) * height),
        ),
        brightness=float(1.0 + rng.uniform(-config.brightness, config.brightness)),
        contrast=float(1.0 + rng.uniform(-config.contrast, config.contrast)),
        gains=tuple(float(g) for g in 1.0 + rng.uniform(-config.color, config.color, size=3)),  # type: ignore[arg-type]
        # Drawn even when flipping is off, so the other draws of an item do not depend on the option.
        flip=bool(rng.random() < 0.5) and config.horizontal_flip,
    )


def reduction_flag(source_size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """(cv2 imread flag, factor) of the largest JPEG DCT reduction still >= height x width."""
    source_width, source_height = source_size
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if source_width // factor >= width and source_height // factor >= height:
            return flag, factor
    return cv2.IMREAD_COLOR, 1


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DecodeError(f"cannot read image {path}: {error.strerror or error}") from error


def _looks_truncated(data: np.ndarray) -> bool:
    """A JPEG whose end-of-image marker is missing from the tail (libjpeg only warns about it)."""
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = data[-64:].tobytes().rstrip(b"\x00\r\n ")
    return not tail.endswith(b"\xff\xd9")


def _confirm_truncated(path: Path) -> Optional[str]:
    """Pillow raises on a truncated JPEG; use it only for the rare file whose tail looks wrong."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except OSError as error:
        return str(error)
    return None


def _header_size(path: Path, data: np.ndarray) -> tuple[int, int]:
    """(width, height) from the file header only (Pillow parses it without decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DecodeError(f"cannot decode image {path}: not a readable image ({data.size} bytes)") from error


def decode_bgr(path: Path, height: int, width: int, source_size: Optional[tuple[int, int]] = None) -> tuple[np.ndarray, int]:
    """Decode at the largest DCT reduction still >= height x width; return (BGR uint8, factor).

    `source_size` (width, height) avoids reading the header when the index already knows it.
    Raises DecodeError naming the path for a missing, undecodable or truncated file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if source_size is None:
        source_size = _header_size(path, data)
    flag, factor = reduction_flag(source_size, height, width)
    image = cv2.imdecode(data, flag)
    if image is None:
        if _looks_truncated(data):
            raise DecodeError(f"corrupt image {path}: truncated JPEG (no end-of-image marker, {data.size} bytes)")
        raise DecodeError(f"cannot decode image {path}: not a readable image ({data.size} bytes)")
    if _looks_truncated(data):
        problem = _confirm_truncated(path)
        if problem is not None:
            raise DecodeError(f"corrupt image {path}: {problem}")
    return image, factor


def decode_image(path: Path, height: int, width: int) -> np.ndarray:
    """Decode an image file to RGB uint8 [height, width, 3], the way the dataset does without augmentation."""
    image, _ = decode_bgr(path, height, width)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def normalise(image_rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> ImageNet-normalised float32 tensor [3, H, W] (for inference)."""
    return to_tensor(image_rgb[:, :, ::-1], Draw())


def affine_matrix(draw: Draw, sx: float, sy: float, width: int, height: int) -> np.ndarray:
    """3x3 matrix from source pixel coordinates to output pixel coordinates (pixel centres aligned)."""
    resize = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    if not draw.geometric:
        return resize
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    augment = np.vstack([cv2.getRotationMatrix2D(centre, draw.angle_deg, draw.scale), [0.0, 0.0, 1.0]])
    augment[0, 2] += draw.shift[0]
    augment[1, 2] += draw.shift[1]
    return augment @ resize


def _lookup_tables(image_bgr: np.ndarray, draw: Draw) -> list[np.ndarray]:
    """One float32 table per output channel (R, G, B): jitter, clip to 0..255, normalise."""
    values = np.arange(256, dtype=np.float64)
    pivot = 0.0
    if draw.contrast != 1.0:
        blue, green, red = cv2.mean(image_bgr)[:3]
        pivot = 0.299 * red * draw.gains[0] + 0.587 * green * draw.gains[1] + 0.114 * blue * draw.gains[2]
    tables = []
    for channel in range(3):
        jittered = values * draw.gains[channel]
        jittered = ((jittered - pivot) * draw.contrast + pivot) * draw.brightness
        jittered = np.clip(jittered, 0.0, 255.0)
        table = (jittered / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        tables.append(table.astype(np.float32).reshape(256, 1))
    return tables


def to_tensor(image_bgr: np.ndarray, draw: Draw) -> torch.Tensor:
    height, width = image_bgr.shape[:2]
    out = np.empty((3, height, width), dtype=np.float32)
    blue, green, red = cv2.split(np.ascontiguousarray(image_bgr))
    for channel, (plane, table) in enumerate(zip((red, green, blue), _lookup_tables(image_bgr, draw))):
        cv2.LUT(plane, table, dst=out[channel])
    return torch.from_numpy(out)


def resample(image: np.ndarray, factor: int, label_matrix: np.ndarray, draw: Draw, height: int, width: int) -> np.ndarray:
    """Map the decoded (DCT-reduced by `factor`) image into output space with one bilinear pass."""
    if not draw.geometric:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    # decoded pixel u covers source pixels [u * factor, (u + 1) * factor): its centre is (u + 0.5) * factor - 0.5
    offset = 0.5 * factor - 0.5
    from_decoded = np.array([[factor, 0.0, offset], [0.0, factor, offset], [0.0, 0.0, 1.0]])
    matrix = (label_matrix @ from_decoded)[:2]
    fill = tuple(255.0 * m for m in reversed(IMAGENET_MEAN))  # BGR mean: normalises to 0
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
    )


def draw_targets(
    slots: Sequence[Optional[Sequence[float]]],
    h_samples: Sequence[int],
    matrix: np.ndarray,
    height: int,
    width: int,
    thickness: int,
) -> np.ndarray:
    """Segmentation target uint8 [height, width]: slot k's lane drawn with value k + 1 (0 = background)."""
    seg = np.zeros((height, width), dtype=np.uint8)
    scale = float(1 << _SUBPIXEL_BITS)
    for slot_index, lane in enumerate(slots):
        if lane is None:
            continue
        points = np.array(valid_points(lane, h_samples), dtype=np.float64)
        mapped = points @ matrix[:2, :2].T + matrix[:2, 2]
        fixed = np.round(mapped * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(seg, [fixed], False, slot_index + 1, thickness, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return seg


def mirrored_lanes(lanes: Sequence[Sequence[float]], image_width: int) -> list[list[float]]:
    """Lanes of the left-right mirrored image: x -> width - 1 - x (pixel centres), missing points (< 0) kept."""
    return [[image_width - 1 - x if x >= 0 else x for x in lane] for lane in lanes]


class LaneDataset(torch.utils.data.Dataset):
    """TuSimple entries (from `load_index`) -> dict(image, seg, exist, index) for SCNN.

    * image: float32 [3, H, W], RGB normalised with ImageNet mean/std;
    * seg: int64 [H, W], 0 background, 1..4 lane slots (see `labels.assign_slots`);
    * exist: float32 [4], 1 where the slot has a lane;
    * index: the entry's position.

    The epoch lives in a shared-memory tensor, so `set_epoch` reaches DataLoader workers that were
    already started (persistent_workers=True) as well as ones started later.
    """

    def __init__(
        self,
        entries: list[dict[str, Any]],
        root: Path,
        height: int,
        width: int,
        augment: bool,
        lane_width_px: int = 16,
        seed: int = 0,
        augment_config: AugmentConfig = AugmentConfig(),
    ) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"output size must be positive, got height={height} width={width}")
        if lane_width_px <= 0:
            raise ValueError(f"lane_width_px must be positive, got {lane_width_px}")
        self.entries = entries
        self.root = Path(root)
        self.height = height
        self.width = width
        self.augment = augment
        self.lane_width_px = lane_width_px
        self.seed = seed
        self.augment_config = augment_config
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # Loader workers are the parallelism; OpenCV's own thread pool would only oversubscribe the
        # cores, and a pool that is running when DataLoader forks its workers can deadlock them
        # (cv2 calls in the child wait on threads that were not copied). Set in the parent, so
        # forked workers inherit a process with no pool.
        cv2.setNumThreads(1)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` (call before iterating, like DistributedSampler)."""
        self._epoch.fill_(int(epoch))

    def rng(self, index: int) -> np.random.Generator:
        """The generator of one item: a pure function of (seed, epoch, index)."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        source_size = (int(entry["width"]), int(entry["height"]))
        image, factor = decode_bgr(self.root / entry["image"], self.height, self.width, source_size)
        draw = random_draw(self.rng(index), self.augment_config, self.width, self.height) if self.augment else Draw()
        lanes = entry["lanes"]
        if draw.flip:
            image = cv2.flip(image, 1)
            lanes = mirrored_lanes(lanes, source_size[0])
        label_matrix = affine_matrix(draw, self.width / source_size[0], self.height / source_size[1], self.width, self.height)
        image = resample(image, factor, label_matrix, draw, self.height, self.width)
        slots = assign_slots(lanes, entry["h_samples"], image_width=source_size[0])
        thickness = max(1, round(self.lane_width_px * self.width / TUSIMPLE_WIDTH * draw.scale))
        seg = draw_targets(slots, entry["h_samples"], label_matrix, self.height, self.width, thickness)
        return {
            "image": to_tensor(image, draw),
            "seg": torch.from_numpy(seg).long(),
            "exist": torch.tensor([0.0 if lane is None else 1.0 for lane in slots], dtype=torch.float32),
            "index": index,
        }
