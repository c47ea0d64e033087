"""Evaluate a checkpoint on the val and test splits with the trainer's `evaluate`, single or under torchrun.

Usage: eval_probe.py DATA_ROOT CHECKPOINT OUT_JSON   (rank 0 writes OUT_JSON)
"""

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset


def main() -> None:
    data_root, checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    from lanex_trainer.checkpoint import load_checkpoint
    from lanex_trainer.data.dataset import LaneDataset
    from lanex_trainer.data.prepare import load_index
    from lanex_trainer.distributed import init_distributed
    from lanex_trainer.engine import evaluate
    from lanex_trainer.evaluation.postprocess import PostprocessSettings
    from lanex_trainer.losses import SCNNLoss
    from lanex_trainer.model.scnn import build_model
    from lanex_trainer.sampling import evaluation_shard

    dist = init_distributed("torch", use_cuda=False, timeout_s=60, sync_batchnorm=False, fp16_allreduce=False)
    state = load_checkpoint(checkpoint)
    config = state["config"]
    model = build_model(config["backbone"], input_size=(config["height"], config["width"]))
    model.load_state_dict(state["model"])
    results = {}
    for split in ("val", "test"):
        entries = load_index(data_root, split)
        dataset = LaneDataset(entries, data_root, config["height"], config["width"], augment=False)
        shard = Subset(dataset, evaluation_shard(len(dataset), dist.world_size, dist.rank))
        result = evaluate(model, SCNNLoss(), DataLoader(shard, batch_size=2), entries, torch.device("cpu"),
                          dist=dist, postprocess=PostprocessSettings(), amp=False)
        results[split] = result.metrics()
    if dist.is_main:
        out.write_text(json.dumps(results))
    dist.shutdown()


if __name__ == "__main__":
    main()
