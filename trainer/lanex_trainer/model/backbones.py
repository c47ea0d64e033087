"""Feature extractors at output stride 8 for SCNN, and loading of torchvision ImageNet weights.

* ``vgg16_bn``: the paper's backbone, torchvision's VGG16-BN ``features`` with the last two
  max-pools removed and conv5_1..conv5_3 dilated by 2 (REFERENCE.md section 3).
* ``resnet18``: torchvision ResNet-18 stem + layer1 + layer2 (stride 8, 128 channels).
* ``small``: a narrow VGG-style net meant for CPU training (demo runs on two cores).

Each builder returns a :class:`Backbone`, which also says what neck widths suit it, so
``scnn.build_model`` can wire the same neck and heads after any of them. Weights are never
downloaded: ImageNet weights come from a torchvision state-dict file the caller names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKBONE_NAMES = ("vgg16_bn", "resnet18", "small")

# Indices in torchvision's vgg16_bn ``features``: the 4th and 5th max-pool, conv5_1..conv5_3.
_VGG_POOLS_REMOVED = (33, 43)
_VGG_CONV5 = (34, 37, 40)


class PretrainedWeightsError(ValueError):
    """A pretrained-weights file is missing, unreadable or does not fit the backbone."""


@dataclass(frozen=True)
class Backbone:
    """A stride-8 feature extractor and the neck widths meant to follow it.

    Attributes:
        features: module mapping ``[B, 3, H, W]`` to ``[B, out_channels, H/8, W/8]``.
        out_channels: channels of the stride-8 feature map.
        neck_channels: width of the dilated 3x3 conv after the backbone (1024 in the paper).
        message_channels: width of the 1x1 conv and of message passing (128 in the paper).
    """

    features: nn.Module
    out_channels: int
    neck_channels: int
    message_channels: int


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, ReLU), BN weight 1 / bias 0, zero conv/linear biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a torchvision-style state dict (``torch.save(model.state_dict(), path)``) onto the CPU.

    ``weights_only=True``: the file is data, never code. torchvision's 2017 files (``vgg16_bn-6c64b313.pth``,
    ``resnet18-5c106cde.pth``) use torch's legacy serialization, which this reads as well.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {path} does not exist")
    with path.open("rb") as stream:
        head = stream.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip file (a pickle before torch 1.6)
        raise PretrainedWeightsError(f"pretrained weights file {path} was not written by torch.save "
                                     "(expected a .pth/.pt state dict such as torchvision's vgg16_bn-6c64b313.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or non-tensor pickles
        reason = str(error).splitlines()[0] if str(error) else "-"
        raise PretrainedWeightsError(f"pretrained weights file {path} could not be read as a state dict "
                                     f"({type(error).__name__}: {reason}); is it truncated?") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"pretrained weights file {path} does not hold a state dict of tensors")
    return dict(state)


def _optional_key(key: str) -> bool:
    """Keys a published file may lack: BatchNorm's ``num_batches_tracked`` appeared in torch 0.4.1,
    after torchvision's VGG16-BN file was published, and torch's own loader fills it in too."""
    return key.endswith("num_batches_tracked")


def _load_prefixed(target: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, path: Path) -> None:
    """Load ``state[prefix + key]`` into ``target[key]`` for every key of ``target``.

    Every parameter and running statistic must be in the file with the target's shape; the first
    key that is missing or has another shape is named in the error, so a wrong file (another
    architecture, a truncated export) is caught before training starts.
    """
    wanted = target.state_dict()
    picked: dict[str, torch.Tensor] = {}
    for key, expected in wanted.items():
        found = state.get(prefix + key)
        if found is None:
            if _optional_key(key):
                continue
            raise PretrainedWeightsError(
                f"pretrained weights file {path} lacks key {prefix}{key} (expected shape {tuple(expected.shape)}); "
                "is it the torchvision file of this backbone?"
            )
        if found.shape != expected.shape:
            raise PretrainedWeightsError(
                f"pretrained weights file {path}: key {prefix}{key} has shape {tuple(found.shape)}, "
                f"the backbone needs {tuple(expected.shape)}"
            )
        picked[key] = found
    result = target.load_state_dict(picked, strict=False)
    # Only optional buffers may stay at their initial value (load_state_dict reports what it skipped).
    assert all(_optional_key(key) for key in result.missing_keys), result.missing_keys


def vgg16_bn_dilated(weights_file: Path | None = None) -> Backbone:
    """torchvision VGG16-BN features, pools 4 and 5 removed, conv5_x dilated by 2: stride 8, 512 channels.

    ``weights_file`` is a torchvision ``vgg16_bn`` state dict (its ``features.*`` keys are used, the
    classifier is ignored). The features are built with torchvision's own ``make_layers`` so the
    ~120M-parameter classifier of ``vgg16_bn()`` is never allocated; the layer indices, and thus
    the state-dict keys, are torchvision's.
    """
    from torchvision.models.vgg import cfgs, make_layers

    layers = make_layers(cfgs["D"], batch_norm=True)
    init_weights(layers)
    if weights_file is not None:
        _load_prefixed(layers, load_state_dict_file(weights_file), "features.", Path(weights_file))
    for index in _VGG_CONV5:
        conv = layers[index]
        conv.dilation, conv.padding = (2, 2), (2, 2)
    kept = [layer for index, layer in enumerate(layers) if index not in _VGG_POOLS_REMOVED]
    return Backbone(nn.Sequential(*kept), out_channels=512, neck_channels=1024, message_channels=128)


def resnet18_stride8(weights_file: Path | None = None) -> Backbone:
    """torchvision ResNet-18 stem, layer1 and layer2: stride 8, 128 channels."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    init_weights(net)
    if weights_file is not None:
        _load_prefixed(net, load_state_dict_file(weights_file), "", Path(weights_file))
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
    return Backbone(features, out_channels=128, neck_channels=256, message_channels=64)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def small_stride8() -> Backbone:
    """Narrow VGG-style net (16-32-64 channels, strided convs, a dilated last conv): stride 8, 64 channels.

    With a 128-wide neck and 32-channel message passing, forward+backward of the whole SCNN at
    144x400, batch 8, takes ~0.2 s of CPU time (one thread; see ``benchmarks/bench_message_passing.py``),
    so a few thousand training steps fit in minutes on two cores.
    """
    layers = [
        *_conv_bn_relu(3, 16, stride=2),
        *_conv_bn_relu(16, 32, stride=2),
        *_conv_bn_relu(32, 32),
        *_conv_bn_relu(32, 64, stride=2),
        *_conv_bn_relu(64, 64),
        *_conv_bn_relu(64, 64, dilation=2),
    ]
    features = nn.Sequential(*layers)
    init_weights(features)
    return Backbone(features, out_channels=64, neck_channels=128, message_channels=32)


def warn_if_from_scratch(name: str, weights_file: Path | None) -> bool:
    """Log a warning when ``vgg16_bn`` is about to be trained without ImageNet weights; True if it did.

    Called by training only: building a model to load a checkpoint into is not training from scratch.
    """
    if name != "vgg16_bn" or weights_file is not None:
        return False
    log.warning(
        "backbone vgg16_bn: no pretrained weights given, training from random initialisation; "
        "the published recipe (and its ~94%% TuSimple accuracy) starts from torchvision's ImageNet "
        "vgg16_bn weights (pretrained_weights / spec.training.pretrainedWeights)"
    )
    return True


def build_backbone(name: str, weights_file: Path | None = None) -> Backbone:
    """The backbone called ``name`` (one of :data:`BACKBONE_NAMES`), optionally with ImageNet weights."""
    if name == "vgg16_bn":
        return vgg16_bn_dilated(weights_file)
    if name == "resnet18":
        return resnet18_stride8(weights_file)
    if name == "small":
        if weights_file is not None:
            raise PretrainedWeightsError(f"backbone 'small' has no pretrained weights; got {weights_file}")
        return small_stride8()
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONE_NAMES)}")
