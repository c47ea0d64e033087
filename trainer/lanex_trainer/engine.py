"""One training epoch and one evaluation pass, independent of how they are wired or launched.

Both take their collaborators as arguments (model, loss, optimizer, loader, scheduler, device,
the `Distributed` handle) and hold no state between calls. Evaluation sums counts over ranks
(loss x images, per-image metric values) and divides once, so any number of ranks gives the
single-process numbers.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from lanex_trainer.distributed import Distributed
from lanex_trainer.evaluation.postprocess import PostprocessSettings, lanes_from_probabilities
from lanex_trainer.losses import SCNNLoss


class TrainingDiverged(RuntimeError):
    """The loss is no longer finite; continuing would only waste the job."""


@dataclass(frozen=True)
class StepTiming:
    """One optimizer step on this rank: its images, the seconds spent waiting for the batch, in all."""

    images: int
    data_seconds: float
    seconds: float


@dataclass
class EpochStats:
    steps: int
    images: int  # images this rank trained on
    loss_sum: float  # sum of per-step losses on this rank
    seconds: float
    stopped: bool = False  # ended early because `should_stop` said so (preemption)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


def autocast_for(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda"
    images = batch["image"].to(device, non_blocking=non_blocking)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["seg"].to(device, non_blocking=non_blocking), batch["exist"].to(device, non_blocking=non_blocking)


def train_one_epoch(
    model: torch.nn.Module,
    criterion: SCNNLoss,
    optimizer: torch.optim.Optimizer,
    loader,
    scheduler,
    device: torch.device,
    epoch: int,
    *,
    dist: Distributed,
    first_step: int,
    max_steps: int,
    amp: bool = True,
    channels_last: bool = False,
    grad_clip_norm: float = 5.0,
    on_step: Optional[Callable[[int, float, StepTiming], None]] = None,
    should_stop: Optional[Callable[[int], bool]] = None,
) -> EpochStats:
    """Train until the loader is exhausted or `max_steps` optimizer steps have been taken in all.

    `first_step` is the global step count before this call; `on_step(step, loss, timing)` runs after
    each optimizer step with the new global count (checkpointing, logging and progress hook). The
    timing ends before the hook, so a checkpoint write counts as neither data wait nor step time.
    `should_stop(step)`, asked after the hook, ends the epoch early (a collective decision: every
    rank gets the same answer for the same step).
    """
    model.train()
    step, images, loss_sum, stopped = first_step, 0, 0.0, False
    started = time.perf_counter()
    fetch_started = started
    for batch in loader:
        if step >= max_steps:
            break
        data_seconds = time.perf_counter() - fetch_started
        inputs, seg_target, exist_target = to_device(batch, device, channels_last)
        with autocast_for(device, amp):
            seg_logits, exist_logits = model(inputs)
        loss = criterion(seg_logits, exist_logits, seg_target, exist_target).total
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"the loss became {value} at step {step + 1} (learning rate {scheduler.get_last_lr()[0]:.4g}); "
                "lower the learning rate or the gradient clipping norm"
            )
        optimizer.zero_grad()  # Horovod's optimizer takes no set_to_none; torch defaults to it
        loss.backward()
        dist.clip_and_step(optimizer, model.parameters(), grad_clip_norm)
        scheduler.step()
        step += 1
        loss_sum += value
        images += inputs.shape[0]
        if on_step is not None:
            on_step(step, value, StepTiming(inputs.shape[0], data_seconds, time.perf_counter() - fetch_started))
        if should_stop is not None and should_stop(step):
            stopped = True
            break
        fetch_started = time.perf_counter()
    return EpochStats(steps=step - first_step, images=images, loss_sum=loss_sum, seconds=time.perf_counter() - started,
                      stopped=stopped)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    fp: float
    fn: float
    images: int
    predictions: list[dict]  # this rank's predictions (TuSimple lines)

    def metrics(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "fp": self.fp, "fn": self.fn, "images": self.images}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    criterion: SCNNLoss,
    loader,
    entries: Sequence[dict],
    device: torch.device,
    *,
    dist: Distributed,
    postprocess: PostprocessSettings,
    amp: bool = True,
    channels_last: bool = False,
) -> EvalResult:
    """Loss and TuSimple metrics over the loader's images, combined over all ranks.

    The loss is the mean of per-image losses, so it does not depend on batch size or rank count.

    `entries[i]` is the index entry (raw_file, h_samples, lanes) of dataset item i. Predictions get
    `run_time` 0: validation scores lane quality; latency is measured by `lanex predict`.
    """
    from lanex_trainer.evaluation.tusimple import MetricSums, evaluate_per_image

    model.eval()
    loss_sum, count = 0.0, 0
    predictions: list[dict] = []
    ground_truth: list[dict] = []
    for batch in loader:
        inputs, seg_target, exist_target = to_device(batch, device, channels_last)
        with autocast_for(device, amp):
            seg_logits, exist_logits = model(inputs)
        loss_sum += criterion.per_image(seg_logits, exist_logits, seg_target, exist_target).sum().item()
        count += inputs.shape[0]
        batch_entries = [entries[int(i)] for i in batch["index"]]
        lanes = lanes_from_probabilities(
            seg_logits.float().softmax(dim=1), exist_logits.float().sigmoid(),
            [e["h_samples"] for e in batch_entries], postprocess,
        )
        for entry, image_lanes in zip(batch_entries, lanes):
            predictions.append({"raw_file": entry["raw_file"], "lanes": image_lanes, "run_time": 0})
            ground_truth.append({"raw_file": entry["raw_file"], "lanes": entry["lanes"], "h_samples": entry["h_samples"]})
    metric = evaluate_per_image(predictions, ground_truth).sums() if count else MetricSums(0.0, 0.0, 0.0, 0)
    totals = dist.all_reduce_sum(torch.tensor([loss_sum, *metric.as_list()], dtype=torch.float64)).tolist()
    combined = MetricSums.from_list(totals[1:])
    scores = combined.scores()
    return EvalResult(
        loss=totals[0] / max(combined.count, 1), accuracy=scores["accuracy"], fp=scores["fp"], fn=scores["fn"],
        images=int(combined.count), predictions=predictions,
    )
