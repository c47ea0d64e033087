"""The SCNN lane-detection network (REFERENCE.md section 3): backbone, neck, message passing, heads.

``SCNN.forward`` returns raw logits only: per-pixel class logits (background + lanes) at the input
resolution and per-lane existence logits. No softmax/sigmoid on the outputs and no loss here: the
loss uses cross-entropy and ``BCEWithLogits``, post-processing applies the sigmoid exactly once.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lanex_trainer.model.backbones import Backbone, build_backbone, init_weights
from lanex_trainer.model.message_passing import MessagePassing

OUTPUT_STRIDE = 8
# The existence branch average-pools the stride-8 map by 2, so inputs must divide by 16.
INPUT_MULTIPLE = OUTPUT_STRIDE * 2
EXIST_HIDDEN = 128


def check_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """Validate ``(height, width)``; both must be positive multiples of 16."""
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (height, width), got {input_size!r}")
    height, width = (int(v) for v in input_size)
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % INPUT_MULTIPLE:
            raise ValueError(
                f"input_size {name} {value} must be a positive multiple of {INPUT_MULTIPLE} "
                f"(output stride {OUTPUT_STRIDE} and a 2x2 pool in the existence branch); got input_size={input_size!r}"
            )
    return height, width


class SCNN(nn.Module):
    """Backbone (stride 8) -> dilated 3x3 + 1x1 neck -> message passing -> segmentation and existence heads."""

    def __init__(
        self,
        backbone: Backbone,
        input_size: tuple[int, int] = (288, 800),
        num_lanes: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_lanes < 1:
            raise ValueError(f"num_lanes must be at least 1, got {num_lanes}")
        self.input_size = check_input_size(input_size)
        self.num_lanes = num_lanes
        hidden, message = backbone.neck_channels, backbone.message_channels
        self.backbone = backbone.features
        self.neck = nn.Sequential(
            nn.Conv2d(backbone.out_channels, hidden, 3, padding=4, dilation=4, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, message, 1, bias=False),
            nn.BatchNorm2d(message),
            nn.ReLU(inplace=True),
        )
        self.message_passing = MessagePassing(message, kernel=9)
        self.seg_head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(message, num_lanes + 1, 1))
        height, width = self.input_size
        pooled = (num_lanes + 1) * (height // INPUT_MULTIPLE) * (width // INPUT_MULTIPLE)
        self.exist_head = nn.Sequential(
            nn.Linear(pooled, EXIST_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(EXIST_HIDDEN, num_lanes),
        )
        # Kaiming (fan-out, ReLU gain) suits convolutions followed by BatchNorm and ReLU, i.e. the
        # neck. The heads end in raw logits with no normalisation after them: Kaiming fan-out on the
        # 5-output 1x1 conv gives logits of std ~14 at step 0 (initial loss ~24 on vgg16_bn instead
        # of ~ln 5), so both heads keep PyTorch's default init, as SCNN_Pytorch's do.
        init_weights(self.neck)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, 3, H, W]`` -> ``(seg_logits [B, num_lanes + 1, H, W], exist_logits [B, num_lanes])``."""
        height, width = x.shape[-2:]
        if (height, width) != self.input_size:
            raise ValueError(
                f"SCNN was built for input_size {self.input_size} (the existence head depends on it), "
                f"got an input of {height}x{width}"
            )
        features = self.message_passing(self.neck(self.backbone(x)))
        logits = self.seg_head(features)
        seg_logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        pooled = F.avg_pool2d(torch.softmax(logits, dim=1), 2)
        exist_logits = self.exist_head(pooled.flatten(1))
        return seg_logits, exist_logits


def build_model(
    backbone: str = "vgg16_bn",
    input_size: tuple[int, int] = (288, 800),
    num_lanes: int = 4,
    pretrained_weights: Path | None = None,
    dropout: float = 0.1,
) -> SCNN:
    """Build SCNN with the named backbone (``vgg16_bn``, ``resnet18`` or ``small``).

    ``pretrained_weights`` is a torchvision ImageNet state-dict file for the backbone (``vgg16_bn``:
    ``vgg16_bn-*.pth``; ``resnet18``: ``resnet18-*.pth``). Nothing is downloaded and nothing is
    picked up from the torch hub cache unless named here. The input size is checked before any
    layer is built, so a bad size fails fast.
    """
    size = check_input_size(input_size)
    return SCNN(build_backbone(backbone, pretrained_weights), input_size=size, num_lanes=num_lanes, dropout=dropout)
