"""Data-parallel scaling of SCNN training: images/s per process for 1..N processes.

Runs itself under torchrun for each process count (gloo on CPU, NCCL with one GPU per process),
trains on fixed random batches (so the data pipeline is not what is measured; see bench_data.py),
and times steps with DDP gradient synchronisation and, for comparison, without it (`no_sync`), so
the communication overhead is reported directly. Unchanged on a multi-GPU machine.

    python benchmarks/bench_scaling.py --max-procs 2 --backbone small --height 144 --width 400 --batch 8

Here (2 CPU cores) more processes cannot run faster: read the per-process figures and the overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from lanex_trainer.losses import SCNNLoss
    from lanex_trainer.model.scnn import build_model

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(0)
    model = build_model(args.backbone, input_size=(args.height, args.width)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    criterion = SCNNLoss().to(device)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, args.height, args.width, device=device)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    seg = torch.randint(0, 5, (args.batch, args.height, args.width), device=device)
    exist = torch.randint(0, 2, (args.batch, 4), device=device).float()

    def step(sync: bool) -> float:
        start = time.perf_counter()
        # no_sync: the same step without the gradient all-reduce (forward and backward inside it).
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = ddp(images)
            criterion(out[0], out[1], seg, exist).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step(True)
    synced = [step(True) for _ in range(args.steps)]
    local = [step(False) for _ in range(args.steps)]
    result = {"world_size": dist.get_world_size(), "rank": dist.get_rank(),
              "sync_ms": statistics.median(synced) * 1e3, "local_ms": statistics.median(local) * 1e3}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        Path(args.result).write_text(json.dumps(gathered))
    dist.barrier()  # leave together (see lanex_trainer.distributed.TorchDistributed.shutdown)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-procs", type=int, default=2)
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8, help="Per-process batch.")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for procs in range(1, args.max_procs + 1):
        result = Path(f"/tmp/lanex-bench-scaling-{os.getpid()}-{procs}.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={procs}",
                   "--master-port=29655", __file__, "--worker", "--result", str(result),
                   *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in {"worker", "result", "max_procs"}]]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        ranks = json.loads(result.read_text())
        result.unlink()
        sync_ms = max(r["sync_ms"] for r in ranks)  # the slowest rank sets the pace
        local_ms = max(r["local_ms"] for r in ranks)
        per_process = args.batch / (sync_ms / 1e3)
        rows.append({"processes": procs, "step_ms": sync_ms, "no_sync_step_ms": local_ms,
                     "images_per_s_per_process": per_process, "images_per_s_total": per_process * procs,
                     "communication_overhead": (sync_ms - local_ms) / sync_ms})
    base = rows[0]["images_per_s_total"]
    print(f"{'procs':>5} {'step ms':>9} {'no-sync ms':>10} {'img/s/proc':>10} {'img/s total':>11} {'efficiency':>10} {'comm':>6}")
    for row in rows:
        row["scaling_efficiency"] = row["images_per_s_total"] / (base * row["processes"])
        print(f"{row['processes']:>5} {row['step_ms']:>9.1f} {row['no_sync_step_ms']:>10.1f} "
              f"{row['images_per_s_per_process']:>10.1f} {row['images_per_s_total']:>11.1f} "
              f"{row['scaling_efficiency']:>10.1%} {row['communication_overhead']:>6.1%}")
    last = rows[-1]
    print(f"SUMMARY scaling backbone={args.backbone} {args.height}x{args.width} batch={args.batch} "
          f"procs={last['processes']} efficiency={last['scaling_efficiency']:.1%} comm_overhead={last['communication_overhead']:.1%}")


if __name__ == "__main__":
    main()
