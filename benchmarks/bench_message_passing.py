"""Benchmark: lanex's fast SCNN message passing against the slice-by-slice textbook version.

Why it exists: message passing is sequential by definition (REFERENCE.md section 3) and made SCNN
~3x slower than its backbone in public ports. ``lanex_trainer.model.message_passing`` claims to be
exactly equal to the naive version and faster; this script checks both claims on the same weights
and input, then times the whole SCNN for the two recipes we train (VGG16-BN at 288x800, the small
CPU backbone at 144x400).

Equality is gated in float64, where the two computations can only differ by rounding (~1e-15): in
float32 a conv output within rounding of zero may fall on the other side of the ReLU in one of
them, which moves a gradient by O(1) at that spot. The float32 differences are printed too.

    python benchmarks/bench_message_passing.py                 # CPU (torch's default threads) or CUDA
    python benchmarks/bench_message_passing.py --threads 2 --repeats 10 --model-repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lanex_trainer.model.message_passing import MessagePassing
from lanex_trainer.model.scnn import build_model

TOLERANCE = 1e-5


def naive_message_passing(x: torch.Tensor, module: MessagePassing) -> torch.Tensor:
    """The straightforward way: per slice a conv2d on ``[B, C, 1, W]`` (or ``[B, C, H, 1]``), ReLU, add; cat."""

    def sweep(x: torch.Tensor, conv: torch.nn.Conv2d, dim: int, reverse: bool) -> torch.Tensor:
        slices = list(x.split(1, dim=dim))
        steps = range(len(slices) - 2, -1, -1) if reverse else range(1, len(slices))
        for i in steps:
            previous = slices[i + 1] if reverse else slices[i - 1]
            slices[i] = slices[i] + F.relu(F.conv2d(previous, conv.weight, padding=conv.padding))
        return torch.cat(slices, dim=dim)

    x = sweep(x, module.top_to_bottom, dim=2, reverse=False)
    x = sweep(x, module.bottom_to_top, dim=2, reverse=True)
    x = sweep(x, module.left_to_right, dim=3, reverse=False)
    return sweep(x, module.right_to_left, dim=3, reverse=True)


def outputs_and_grads(
    forward: Callable[[torch.Tensor], torch.Tensor], module: MessagePassing, x: torch.Tensor, grad: torch.Tensor
) -> list[torch.Tensor]:
    """Output, d(input) and d(each sweep weight) for loss ``sum(out * grad)``."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = forward(x)
    (out * grad).sum().backward()
    return [out.detach(), x.grad] + [conv.weight.grad for conv in module.sweeps()]


def relative_errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    return [((g - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want)]


def check_equal(module: MessagePassing, x: torch.Tensor, dtype: torch.dtype) -> list[float]:
    """Relative max-abs differences (output, input grad, 4 weight grads) of fast vs naive in ``dtype``."""
    module = module.to(dtype)
    x = x.to(dtype)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device=x.device, dtype=dtype)
    naive = outputs_and_grads(lambda t: naive_message_passing(t, module), module, x, grad)
    fast = outputs_and_grads(module, module, x, grad)
    return relative_errors(fast, naive)


@dataclass(frozen=True)
class Timing:
    """Median wall-clock seconds of a step and the median CPU seconds this process spent in it.

    On a shared machine ``cpu_s / wall_s`` well below the thread count means other work held the
    cores, and the wall time overstates the step.
    """

    wall_s: float
    cpu_s: float

    def __str__(self) -> str:
        return f"{self.wall_s:.4f} s (CPU {self.cpu_s:.4f} s)"

    @staticmethod
    def median_of(runs: list[tuple[float, float]]) -> Timing:
        """The medians of (wall, CPU) seconds of several runs."""
        return Timing(statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def timed(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `step`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def median_timing(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> Timing:
    for _ in range(warmup):
        step()
    return Timing.median_of([timed(step, device) for _ in range(repeats)])


def paired_timings(reference: Callable[[], None], candidate: Callable[[], None], device: torch.device,
                   repeats: int, warmup: int) -> tuple[Timing, Timing, float]:
    """Median timings of both, run alternately, and the median of the per-pair speed-ups.

    Alternating keeps a slow spell of a shared machine from landing on one side only; the ratio
    within each pair cancels it out.
    """
    for _ in range(warmup):
        reference()
        candidate()
    pairs = [(timed(reference, device), timed(candidate, device)) for _ in range(repeats)]
    speedup = statistics.median(ref[0] / cand[0] for ref, cand in pairs)
    return Timing.median_of([p[0] for p in pairs]), Timing.median_of([p[1] for p in pairs]), speedup


def message_passing_step(
    forward: Callable[[torch.Tensor], torch.Tensor], module: MessagePassing, x: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        forward(x).sum().backward()

    return step


def model_step(backbone: str, size: tuple[int, int], batch: int, device: torch.device) -> Callable[[], None]:
    model = build_model(backbone, input_size=size).to(device).train()
    images = torch.randn(batch, 3, *size, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        seg_logits, exist_logits = model(images)
        (seg_logits.mean() + exist_logits.mean()).backward()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of message passing (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--model-repeats", type=int, default=3, help="timed runs of each full SCNN step")
    parser.add_argument("--skip-models", action="store_true", help="time message passing only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")

    module = MessagePassing(channels=128, kernel=9).to(device)
    x = torch.randn(4, 128, 36, 100, device=device)
    errors64 = check_equal(module, x, torch.float64)
    errors32 = check_equal(module, x, torch.float32)
    names = ["output", "grad_input"] + [f"grad_{conv}" for conv in ("t2b", "b2t", "l2r", "r2l")]
    print("float64 fast-vs-naive relative error: " + ", ".join(f"{n}={e:.1e}" for n, e in zip(names, errors64)))
    print("float32 fast-vs-naive relative error: " + ", ".join(f"{n}={e:.1e}" for n, e in zip(names, errors32)))
    equal = max(errors64) <= TOLERANCE
    print(f"equal within {TOLERANCE:g} (float64): {'yes' if equal else 'NO'}")

    x.requires_grad_(True)
    naive, fast, speedup = paired_timings(
        message_passing_step(lambda t: naive_message_passing(t, module), module, x),
        message_passing_step(module, module, x), device, args.repeats, args.warmup,
    )
    print(f"message passing fwd+bwd, batch 4, 128x36x100 (medians of {args.repeats} alternating pairs): "
          f"naive {naive}, fast {fast}, speed-up {speedup:.2f}x (median of the per-pair ratios)")

    summary = f"SUMMARY device={device} threads={torch.get_num_threads()} equal={'yes' if equal else 'NO'} "
    summary += f"mp_naive={naive.wall_s:.4f}s mp_fast={fast.wall_s:.4f}s speedup={speedup:.2f}x"
    if not args.skip_models:
        for backbone, size, batch in (("vgg16_bn", (288, 800), 1), ("small", (144, 400), 8)):
            timing = median_timing(model_step(backbone, size, batch, device), device, args.model_repeats, 1)
            print(f"SCNN {backbone} {size[0]}x{size[1]} batch {batch} fwd+bwd: {timing}")
            summary += f" scnn_{backbone}_{size[0]}x{size[1]}_b{batch}={timing.wall_s:.4f}s"
    print(summary)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
