"""From SCNN's outputs to TuSimple lanes: one x per ground-truth row, -2 where there is none.

Per image: keep slot i when its existence probability exceeds the threshold; smooth its
probability map with a small box filter; at each `h_sample` row (mapped to the network's
resolution, linearly interpolated between rows) take the arg-max column, refined to sub-pixel
precision by the probability-weighted mean of its neighbours, when its probability exceeds
`point_threshold`; scale to the original width. Lanes with fewer than two points are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

MISSING = -2


@dataclass(frozen=True)
class PostprocessSettings:
    existence_threshold: float = 0.5
    point_threshold: float = 0.3
    image_width: int = 1280
    image_height: int = 720
    blur: bool = True
    refine_radius: int = 2


def _box_kernel(width: int) -> int:
    """A box filter of about 9 pixels at 800 wide, scaled with the resolution, always odd."""
    size = max(1, round(9 * width / 800))
    return size if size % 2 else size + 1


def _rows_at(prob: torch.Tensor, h_samples: Sequence[int], image_height: int) -> torch.Tensor:
    """prob [L, H, W] sampled at the label rows -> [L, len(h_samples), W] (linear in y)."""
    height = prob.shape[1]
    ys = torch.tensor(h_samples, dtype=torch.float32, device=prob.device)
    rows = ((ys + 0.5) * height / image_height - 0.5).clamp(0, height - 1)
    lower = rows.floor().long()
    upper = (lower + 1).clamp(max=height - 1)
    weight = (rows - lower.float()).view(1, -1, 1)
    return prob[:, lower] * (1 - weight) + prob[:, upper] * weight


def lanes_from_probabilities(
    seg_prob: torch.Tensor,
    exist_prob: torch.Tensor,
    h_samples: Sequence[Sequence[int]],
    settings: PostprocessSettings = PostprocessSettings(),
) -> list[list[list[int]]]:
    """seg_prob [B, 1+L, H, W] (softmax), exist_prob [B, L] -> per image, its lanes as x lists."""
    lane_prob = seg_prob[:, 1:].float()
    batch, lanes, height, width = lane_prob.shape
    if settings.blur:
        kernel = _box_kernel(width)
        lane_prob = F.avg_pool2d(lane_prob, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    scale_x = settings.image_width / width
    columns = torch.arange(width, dtype=torch.float32, device=lane_prob.device)
    results: list[list[list[int]]] = []
    for b in range(batch):
        rows = _rows_at(lane_prob[b], h_samples[b], settings.image_height)  # [L, R, W]
        peak, argmax = rows.max(dim=2)  # [L, R]
        # Sub-pixel x: probability-weighted mean over a small window around the peak.
        offsets = torch.arange(-settings.refine_radius, settings.refine_radius + 1, device=rows.device)
        window = (argmax.unsqueeze(-1) + offsets).clamp(0, width - 1)  # [L, R, K]
        weights = rows.gather(2, window)
        x_net = (weights * columns[window]).sum(-1) / weights.sum(-1).clamp_min(1e-12)
        x_image = ((x_net + 0.5) * scale_x - 0.5).round().long()
        image_lanes = []
        for lane in range(lanes):
            if exist_prob[b, lane] <= settings.existence_threshold:
                continue
            valid = peak[lane] > settings.point_threshold
            if int(valid.sum()) < 2:
                continue
            xs = torch.where(valid, x_image[lane].clamp(0, settings.image_width - 1), torch.full_like(x_image[lane], MISSING))
            image_lanes.append(xs.tolist())
        results.append(image_lanes)
    return results
