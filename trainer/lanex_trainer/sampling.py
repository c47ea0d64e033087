"""Which images each rank sees, and in what order.

Training: a seeded permutation per epoch (`set_epoch`), padded to a multiple of the world size
and dealt out rank by rank, like torch's DistributedSampler; it can also start mid-epoch so a
resumed run sees exactly the batches it had not seen yet.
Evaluation: every image exactly once across ranks (no padding), so summed metrics over ranks
equal the single-process metrics.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    def __init__(self, dataset_size: int, world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if dataset_size < 1:
            raise ValueError("the training split is empty")
        self.dataset_size = dataset_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_index = 0
        self.per_rank = -(-dataset_size // world_size)  # ceil: every rank takes the same number of steps

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch's permutation; skip the first `start_index` samples of this rank."""
        self.epoch = epoch
        self.start_index = start_index

    def _epoch_order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        padding = self.per_rank * self.world_size - self.dataset_size
        order += order[:padding]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_order()[self.start_index :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_index)


def evaluation_shard(dataset_size: int, world_size: int, rank: int) -> list[int]:
    """This rank's share of the evaluation images: each image on exactly one rank."""
    return list(range(rank, dataset_size, world_size))
