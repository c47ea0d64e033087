"""`lanex import-checkpoint`: bring a model trained with TR-4896's code into lanex.

TR-4896's training code derives from SCNN_Pytorch (github.com/harryhan618/SCNN_Pytorch), whose
network is lanex's ``vgg16_bn`` SCNN parameter for parameter under other names (its ``model.py``):

==========================================  =====================================================
SCNN_Pytorch                                lanex
==========================================  =====================================================
``backbone.{i}`` (torchvision indices; 33    ``backbone.{j}``, ``j = i`` below 33, ``i - 1`` above
and 43, the removed pools, are absent)       (the pools are not in lanex's Sequential at all)
``layer1.{k}`` (dilated 3x3 + 1x1 neck)      ``neck.{k}``
``message_passing.up_down`` / ``down_up`` /  ``message_passing.top_to_bottom`` / ``bottom_to_top`` /
``left_right`` / ``right_left``              ``left_to_right`` / ``right_to_left``
``layer2.1`` (1x1 conv to 5 classes)         ``seg_head.1``
``fc.0``, ``fc.2`` (existence MLP)           ``exist_head.0``, ``exist_head.2``
``ce_loss.weight`` (the loss's class         dropped (lanex's loss is not part of the model)
weights, a buffer of its model)
==========================================  =====================================================

Its checkpoints are ``{"epoch", "net": state_dict, "optim", "lr_scheduler", "best_val_loss"}``
(``train.py``), saved from ``net.module`` or, in derived code, from the ``DataParallel`` wrapper
itself (``module.`` prefixes); a bare state dict is accepted too. Its existence head ends in a
``Sigmoid`` with no parameters, lanex's returns logits and applies the sigmoid in post-processing, so
probabilities are the same. The file is read as data (:func:`checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from lanex_trainer.checkpoint import atomic_torch_save, load_checkpoint

SOURCES = ("scnn-pytorch",)
_REMOVED_POOLS = (33, 43)  # torchvision vgg16_bn feature indices SCNN drops
_MESSAGE_PASSING = {"up_down": "top_to_bottom", "down_up": "bottom_to_top",
                    "left_right": "left_to_right", "right_left": "right_to_left"}
_DROPPED = ("ce_loss.weight",)
_RENAMES = ((re.compile(r"^layer1\."), "neck."), (re.compile(r"^layer2\.1\."), "seg_head.1."),
            (re.compile(r"^fc\.(0|2)\."), r"exist_head.\1."))


class ImportCheckpointError(ValueError):
    """A file that is not an SCNN_Pytorch checkpoint of lanex's architecture; the message names it."""


def lanex_key(reference_key: str) -> Optional[str]:
    """The lanex name of one SCNN_Pytorch state-dict key (``module.`` prefixes stripped); None: not a model weight."""
    key = reference_key
    while key.startswith("module."):
        key = key[len("module."):]
    if key in _DROPPED:
        return None
    backbone = re.fullmatch(r"^backbone\.(\d+)\.(.+)$", key)
    if backbone:
        index = int(backbone.group(1))
        if index in _REMOVED_POOLS or index > 43:
            raise ImportCheckpointError(f"key {reference_key}: SCNN's backbone has no layer {index}")
        return f"backbone.{index if index < 33 else index - 1}.{backbone.group(2)}"
    passing = re.fullmatch(r"^message_passing\.(\w+)\.weight$", key)
    if passing and passing.group(1) in _MESSAGE_PASSING:
        return f"message_passing.{_MESSAGE_PASSING[passing.group(1)]}.weight"
    for pattern, replacement in _RENAMES:
        if pattern.match(key):  # a prefix, renamed; the rest of the key is kept
            return pattern.sub(replacement, key)
    raise ImportCheckpointError(f"key {reference_key} is not part of SCNN_Pytorch's SCNN")


def reference_state_dict(loaded: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The model state dict inside an SCNN_Pytorch checkpoint (``{"net": ...}``) or a bare state dict."""
    if isinstance(loaded, Mapping):
        for field in ("net", "state_dict", "model"):
            if isinstance(loaded.get(field), Mapping):
                loaded = loaded[field]
                break
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ImportCheckpointError(f"{path}: neither an SCNN_Pytorch checkpoint ({{'net': state_dict, ...}}) nor a state dict")
    return loaded


def input_size_of(state: Mapping[str, torch.Tensor], height: int, width: Optional[int], path: Path) -> tuple[int, int]:
    """(height, width) the checkpoint was trained at: its existence MLP takes 5 x H/16 x W/16 inputs."""
    features = int(state["exist_head.0.weight"].shape[1])
    if width is None:
        cells, rest = divmod(features, 5 * (height // 16))
        if rest or height % 16:
            raise ImportCheckpointError(
                f"{path}: its existence head takes {features} inputs, which no width fits at height {height}; "
                "pass --height and --width")
        width = cells * 16
    if 5 * (height // 16) * (width // 16) != features:
        raise ImportCheckpointError(
            f"{path}: its existence head takes {features} inputs (5 x H/16 x W/16), not those of {height}x{width}; "
            "pass the --height/--width it was trained at")
    return height, width


def import_scnn_pytorch(source: Path, out: Path, height: int = 288, width: Optional[int] = None) -> dict:
    """Write a lanex checkpoint (``model`` + ``config``) holding the SCNN_Pytorch model in ``source``."""
    from lanex_trainer.config import TrainConfig
    from lanex_trainer.model.scnn import build_model

    source = Path(source)
    try:
        loaded = load_checkpoint(source)
    except FileNotFoundError as error:
        raise ImportCheckpointError(f"{source}: no such file") from error
    except Exception as error:  # unsafe (refused), torn, or not a torch file at all
        raise ImportCheckpointError(f"{source}: cannot be read as a checkpoint ({error})") from error
    state: dict[str, torch.Tensor] = {}
    for key, value in reference_state_dict(loaded, source).items():
        try:
            mapped = lanex_key(key)
        except ImportCheckpointError as error:
            raise ImportCheckpointError(f"{source}: {error}") from None
        if mapped is not None:
            state[mapped] = value
    if "exist_head.0.weight" not in state:
        raise ImportCheckpointError(f"{source}: lacks the existence head (fc.0.weight); not an SCNN checkpoint")
    height, width = input_size_of(state, height, width, source)
    model = build_model("vgg16_bn", input_size=(height, width))
    wanted = model.state_dict()
    for key, expected in wanted.items():
        if key not in state:
            raise ImportCheckpointError(f"{source}: lacks {key} (lanex name), which lanex's vgg16_bn SCNN needs")
        if state[key].shape != expected.shape:
            raise ImportCheckpointError(
                f"{source}: {key} (lanex name) has shape {tuple(state[key].shape)}, lanex's vgg16_bn SCNN needs "
                f"{tuple(expected.shape)}")
    model.load_state_dict(state, strict=True)
    config = TrainConfig(data_root=Path("."), output_dir=Path("."), backbone="vgg16_bn", height=height, width=width)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    epoch = loaded.get("epoch") if isinstance(loaded, Mapping) and isinstance(loaded.get("epoch"), int) else None
    atomic_torch_save({
        "model": model.state_dict(), "config": config.model_dump(mode="json"), "fingerprint": config.fingerprint(),
        "step": 0, "epoch": 0,
        "imported_from": {"format": "scnn-pytorch", "file": str(source), "sha256": digest, "epoch": epoch},
    }, Path(out))
    return {"checkpoint": str(out), "backbone": "vgg16_bn", "height": height, "width": width,
            "tensors": len(state), "source_sha256": digest, "source_epoch": epoch}
