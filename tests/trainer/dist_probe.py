"""Run under a launcher (torchrun, mpirun, horovodrun): a few training steps of the small SCNN,
recording after every step the mean loss over ranks and a digest of this rank's parameters.

Usage: dist_probe.py DATA_ROOT OUT_DIR GLOBAL_BATCH STEPS BACKEND SYNC_BN
Each rank writes OUT_DIR/rank<N>.json. Uses the trainer's own pieces (distributed context,
sampler, dataset, model, loss, train_one_epoch) so the launchers are exercised for real.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader


def freeze_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            freeze_batchnorm(child)
    return module


def main() -> None:
    data_root, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    global_batch, steps, backend, sync_bn = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1"
    torch.set_num_threads(1)
    from lanex_trainer.data.dataset import LaneDataset
    from lanex_trainer.data.prepare import load_index
    from lanex_trainer.distributed import init_distributed
    from lanex_trainer.engine import train_one_epoch
    from lanex_trainer.losses import SCNNLoss
    from lanex_trainer.model.scnn import build_model
    from lanex_trainer.sampling import ResumableDistributedSampler

    dist = init_distributed(backend, use_cuda=False, timeout_s=60, sync_batchnorm=sync_bn, fp16_allreduce=False)
    torch.manual_seed(0)
    # Frozen BatchNorm and no dropout: then 2 ranks x B/2 compute the same function as 1 x B, and
    # what remains is the per-rank normalisation of the class-weighted loss and float rounding.
    model = freeze_batchnorm(build_model("small", input_size=(64, 160), dropout=0.0))
    dataset = LaneDataset(load_index(data_root, "train"), data_root, 64, 160, augment=False)
    sampler = ResumableDistributedSampler(len(dataset), dist.world_size, dist.rank, seed=0)
    sampler.set_epoch(0)
    loader = DataLoader(dataset, batch_size=global_batch // dist.world_size, sampler=sampler)
    wrapped = dist.wrap_model(model, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    optimizer = dist.wrap_optimizer(optimizer, model)
    dist.broadcast_initial_state(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    losses, digests = [], []

    def on_step(step: int, loss: float, timing) -> None:
        mean = dist.all_reduce_sum(torch.tensor([loss], dtype=torch.float64)).item() / dist.world_size
        losses.append(mean)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        digests.append(hashlib.sha256(flat.numpy().tobytes()).hexdigest())

    train_one_epoch(wrapped, SCNNLoss(), optimizer, loader, scheduler, torch.device("cpu"), 0, dist=dist, grad_clip_norm=5.0,
                    first_step=0, max_steps=steps, amp=False, on_step=on_step)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(
        {"rank": dist.rank, "world_size": dist.world_size, "backend": dist.backend, "losses": losses, "digests": digests}))
    dist.shutdown()


if __name__ == "__main__":
    main()
