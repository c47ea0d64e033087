"""SCNN's training objective, kept out of the model's forward pass.

Weighted cross-entropy over background + lanes (background down-weighted, as in SCNN) plus a
small binary cross-entropy on lane existence. Existence comes as logits: the sigmoid is applied
once, inside BCEWithLogits here and in post-processing there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LossParts:
    total: torch.Tensor
    segmentation: torch.Tensor
    existence: torch.Tensor


class SCNNLoss(nn.Module):
    def __init__(self, num_lanes: int = 4, background_weight: float = 0.4, existence_weight: float = 0.1):
        super().__init__()
        class_weights = torch.ones(num_lanes + 1)
        class_weights[0] = background_weight
        self.register_buffer("class_weights", class_weights)
        self.existence_weight = existence_weight

    def forward(
        self, seg_logits: torch.Tensor, exist_logits: torch.Tensor, seg_target: torch.Tensor, exist_target: torch.Tensor
    ) -> LossParts:
        segmentation = nn.functional.cross_entropy(seg_logits.float(), seg_target, weight=self.class_weights)
        existence = nn.functional.binary_cross_entropy_with_logits(exist_logits.float(), exist_target)
        return LossParts(segmentation + self.existence_weight * existence, segmentation, existence)

    def per_image(
        self, seg_logits: torch.Tensor, exist_logits: torch.Tensor, seg_target: torch.Tensor, exist_target: torch.Tensor
    ) -> torch.Tensor:
        """The same loss for each image on its own, [B]: independent of how images are batched or
        spread over ranks, so validation losses can be summed over images and ranks exactly."""
        pixel = nn.functional.cross_entropy(seg_logits.float(), seg_target, weight=self.class_weights, reduction="none")
        weight_sum = self.class_weights[seg_target].sum(dim=(1, 2))
        segmentation = pixel.sum(dim=(1, 2)) / weight_sum
        existence = nn.functional.binary_cross_entropy_with_logits(
            exist_logits.float(), exist_target, reduction="none"
        ).mean(dim=1)
        return segmentation + self.existence_weight * existence
