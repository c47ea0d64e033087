"""GPU readiness in one run: is a node fast enough for the recipe, and where would it stall?

Before a multi-GPU job is worth its cost, one GPU should show that every stage of training runs at
speed there. This script measures, in one process, within a time budget (8 minutes by default on a
GPU), and prints one JSON object:

* ``train``: SCNN training images/s at 288x800 (SGD step with the real loss, bf16 autocast,
  channels-last) for ``vgg16_bn`` and ``small``, eager and with ``torch.compile`` (the backbone,
  neck and heads are compiled; message passing, a sequential loop of GEMMs in one autograd
  Function, stays as it is), with the first step's seconds (compilation) apart;
* ``message_passing``: fwd+bwd of lanex's sweep against the slice-by-slice reference
  (``bench_message_passing.py``), their equality in float64, and the bf16 drift: a bf16 sweep and
  lanex under bf16 autocast (which sweeps in float32) against float32;
* ``dataloader``: ``LaneDataset`` + ``DataLoader`` images/s at 288x800 with augmentation for 1..N
  worker processes, on a synthetic set in the TuSimple layout;
* ``jpeg_decode``: 1280x720 JPEG decode images/s with ``torchvision.io.decode_jpeg`` on the GPU
  (batched) against the CPU (torchvision and OpenCV).

``--smoke`` runs the same code on the CPU with tiny sizes and counts in seconds (compiled with the
``aot_eager`` backend: dynamo capture and AOTAutograd as inductor uses them, without its C++ code
generation, which alone takes minutes on a small CPU); the tests run it.

    python benchmarks/gpu_check.py [--json out.json]           # on a GPU node: < 8 minutes
    python benchmarks/gpu_check.py --smoke                     # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench_data import build_dataset
from bench_message_passing import check_equal, message_passing_step, naive_message_passing, paired_timings

BACKBONES = ("vgg16_bn", "small")


@dataclass(frozen=True)
class Settings:
    """Sizes and counts of one check; :func:`full` on a GPU, :func:`smoke` on a CPU."""

    device: str
    size: tuple[int, int]
    batches: dict[str, int]
    warmup_steps: int
    timed_steps: int
    compile_backend: str
    mp_shape: tuple[int, int, int, int]  # batch, channels, height, width of message passing
    mp_repeats: int
    clips: int
    loader_workers: tuple[int, ...]
    loader_batch: int
    loader_epochs: int
    decode_images: int
    budget_s: float


def full(device: str, budget_s: float) -> Settings:
    cores = os.cpu_count() or 1
    workers = tuple(w for w in (1, 2, 4, 8, 16, 32) if w <= cores)
    return Settings(device=device, size=(288, 800), batches={"vgg16_bn": 16, "small": 32}, warmup_steps=5,
                    timed_steps=20, compile_backend="inductor", mp_shape=(8, 128, 36, 100), mp_repeats=10,
                    clips=128, loader_workers=workers, loader_batch=16, loader_epochs=2, decode_images=128,
                    budget_s=budget_s)


def smoke() -> Settings:
    return Settings(device="cpu", size=(32, 64), batches={"vgg16_bn": 2, "small": 2}, warmup_steps=1, timed_steps=2,
                    compile_backend="aot_eager", mp_shape=(2, 16, 6, 12), mp_repeats=2, clips=6,
                    loader_workers=(1, 2), loader_batch=2, loader_epochs=1, decode_images=4, budget_s=600.0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_parts(model: torch.nn.Module, backend: str) -> None:
    """torch.compile every part of SCNN but its message passing (see the module docstring)."""
    for name in ("backbone", "neck", "seg_head", "exist_head"):
        setattr(model, name, torch.compile(getattr(model, name), backend=backend))


def train_throughput(backbone: str, compiled: bool, settings: Settings) -> dict[str, Any]:
    """Images/s of full training steps (forward, loss, backward, SGD) on random images and targets."""
    from lanex_trainer.losses import SCNNLoss
    from lanex_trainer.model.scnn import build_model

    device = torch.device(settings.device)
    height, width = settings.size
    batch = settings.batches[backbone]
    model = build_model(backbone, input_size=settings.size).to(device).to(memory_format=torch.channels_last).train()
    if compiled:
        compile_parts(model, settings.compile_backend)
    criterion = SCNNLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=generator).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    seg = torch.randint(0, 5, (batch, height, width), generator=generator).to(device)
    exist = torch.randint(0, 2, (batch, 4), generator=generator).float().to(device)

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            seg_logits, exist_logits = model(images)
        loss = criterion(seg_logits, exist_logits, seg, exist).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    synchronize(device)
    first_step_s = time.perf_counter() - started
    for _ in range(settings.warmup_steps):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(settings.timed_steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": round(batch * settings.timed_steps / seconds, 2), "batch": batch,
            "first_step_s": round(first_step_s, 3), "timed_steps": settings.timed_steps,
            "compile_backend": settings.compile_backend if compiled else None}


def relative_l2(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    return [round(((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-30)).item(), 6)
            for g, w in zip(got, want)]


def message_passing_check(settings: Settings) -> dict[str, Any]:
    """Speed of lanex's sweep vs the naive one (fp32), their float64 equality, and bf16 drift."""
    from lanex_trainer.model.message_passing import MessagePassing

    device = torch.device(settings.device)
    batch, channels, height, width = settings.mp_shape
    torch.manual_seed(0)
    module = MessagePassing(channels=channels, kernel=9).to(device)
    x = torch.relu(torch.randn(batch, channels, height, width, device=device))
    errors64 = check_equal(module, x, torch.float64)
    module = module.float()
    x = x.float().requires_grad_(True)
    naive, fast, speedup = paired_timings(
        message_passing_step(lambda t: naive_message_passing(t, module), module, x),
        message_passing_step(module, module, x), device, settings.mp_repeats, 1,
    )
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)

    def outputs(forward: Callable[[torch.Tensor], torch.Tensor], owner: MessagePassing, inputs: torch.Tensor,
                autocast: bool) -> list[torch.Tensor]:
        inputs = inputs.detach().clone().requires_grad_(True)
        owner.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            out = forward(inputs)
        (out.float() * upstream).sum().backward()
        return [out.detach().float(), inputs.grad.float()] + [conv.weight.grad.float() for conv in owner.sweeps()]

    rounded = x.detach().to(torch.bfloat16)
    reference = outputs(module, module, rounded.float(), autocast=False)
    lanex_bf16 = outputs(module, module, rounded, autocast=True)
    module_bf16 = MessagePassing(channels=channels, kernel=9).to(device)
    module_bf16.load_state_dict(module.state_dict())
    module_bf16 = module_bf16.to(torch.bfloat16)
    naive_bf16 = outputs(lambda t: naive_message_passing(t, module_bf16), module_bf16, rounded, autocast=False)
    names = ["output", "grad_input", "grad_t2b", "grad_b2t", "grad_l2r", "grad_r2l"]
    return {
        "shape": list(settings.mp_shape),
        "naive_fwd_bwd_s": round(naive.wall_s, 5), "fast_fwd_bwd_s": round(fast.wall_s, 5),
        "speedup": round(speedup, 3),
        "float64_max_relative_error": max(errors64), "equal_float64": max(errors64) <= 1e-5,
        # Relative L2 against float32 on the same bf16-rounded input.
        "bf16_sweep_drift": dict(zip(names, relative_l2(naive_bf16, reference))),
        "lanex_under_bf16_autocast_drift": dict(zip(names, relative_l2(lanex_bf16, reference))),
    }


def dataloader_check(root: Path, entries: list[dict], settings: Settings) -> dict[str, Any]:
    """LaneDataset + DataLoader images/s at the training size with augmentation, per worker count."""
    from torch.utils.data import DataLoader

    from lanex_trainer.data.dataset import LaneDataset

    height, width = settings.size
    dataset = LaneDataset(entries, root, height, width, augment=True, seed=0)
    rates = {}
    for workers in settings.loader_workers:
        loader = DataLoader(dataset, batch_size=settings.loader_batch, shuffle=True, num_workers=workers,
                            persistent_workers=True, pin_memory=settings.device == "cuda", prefetch_factor=4)
        for _ in loader:  # epoch 0 starts the workers; not timed
            pass
        images, started = 0, time.perf_counter()
        for epoch in range(1, 1 + settings.loader_epochs):
            dataset.set_epoch(epoch)
            for batch in loader:
                images += batch["image"].shape[0]
        rates[str(workers)] = round(images / (time.perf_counter() - started), 1)
        del loader
    return {"size": [height, width], "images": len(entries), "images_per_s_by_workers": rates}


def jpeg_decode_check(paths: list[Path], settings: Settings) -> dict[str, Any]:
    """Images/s decoding the same JPEG files: torchvision on the check's device (batched), on the CPU, OpenCV."""
    import cv2
    import numpy as np
    from torchvision.io import decode_jpeg

    device = torch.device(settings.device)
    data = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8) for path in paths]
    arrays = [np.frombuffer(path.read_bytes(), dtype=np.uint8) for path in paths]

    def rate(decode: Callable[[], Any]) -> float:
        decode()  # warm-up (CUDA context, nvjpeg handles)
        synchronize(device)
        started = time.perf_counter()
        decode()
        synchronize(device)
        return round(len(paths) / (time.perf_counter() - started), 1)

    return {
        "images": len(paths),
        "torchvision_device": str(device),
        "torchvision_on_device_images_per_s": rate(lambda: decode_jpeg(data, device=device)),
        "torchvision_cpu_images_per_s": rate(lambda: [decode_jpeg(d) for d in data]),
        "opencv_cpu_images_per_s": rate(lambda: [cv2.imdecode(a, cv2.IMREAD_COLOR) for a in arrays]),
    }


def run(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {"device": settings.device, "torch": torch.__version__,
                               "settings": {k: v for k, v in asdict(settings).items()}, "errors": {}}
    if settings.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)

    def within_budget(name: str, measure: Callable[[], Any]) -> Any:
        if time.perf_counter() - started > settings.budget_s:
            results["errors"][name] = f"skipped: the {settings.budget_s:.0f} s budget is spent"
            return None
        try:
            return measure()
        except Exception as error:  # one failing check (e.g. a compile error) must not hide the others
            results["errors"][name] = f"{type(error).__name__}: {error}"
            return None

    results["train"] = {}
    for backbone in BACKBONES:
        for mode in ("eager", "compile"):
            key = f"{backbone}_{mode}"
            results["train"][key] = within_budget(f"train.{key}", lambda b=backbone, m=mode: train_throughput(b, m == "compile", settings))
    results["message_passing"] = within_budget("message_passing", lambda: message_passing_check(settings))
    with tempfile.TemporaryDirectory(prefix="lanex-gpu-check-") as tmp:
        root = Path(tmp)
        entries = build_dataset(root, settings.clips)
        results["dataloader"] = within_budget("dataloader", lambda: dataloader_check(root, entries, settings))
        paths = [root / entry["image"] for entry in entries[: settings.decode_images]]
        results["jpeg_decode"] = within_budget("jpeg_decode", lambda: jpeg_decode_check(paths, settings))
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Same code on the CPU, tiny sizes, in seconds.")
    parser.add_argument("--device", default="cuda", help="Device of the full check (default cuda).")
    parser.add_argument("--budget-s", type=float, default=420.0, help="Skip checks not started within this time.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this file.")
    args = parser.parse_args(argv)
    if not args.smoke and args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    results = run(smoke() if args.smoke else full(args.device, args.budget_s))
    results["smoke"] = args.smoke
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
