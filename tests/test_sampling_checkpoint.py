"""Sampler sharding/resume and crash-safe checkpoints."""

import logging
from pathlib import Path

import torch

from lanex_trainer.checkpoint import load_latest_checkpoint, save_checkpoint
from lanex_trainer.sampling import ResumableDistributedSampler, evaluation_shard


def test_two_ranks_cover_every_training_image_and_take_equal_steps():
    samplers = [ResumableDistributedSampler(11, world_size=2, rank=r, seed=3) for r in range(2)]
    for s in samplers:
        s.set_epoch(5)
    shards = [list(s) for s in samplers]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(11))


def test_epochs_shuffle_differently_and_reproducibly():
    sampler = ResumableDistributedSampler(50, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first != second


def test_resume_mid_epoch_yields_the_remaining_samples_only():
    sampler = ResumableDistributedSampler(20, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_index=8)
    assert list(sampler) == full[8:] and len(sampler) == 12


def test_evaluation_shards_count_each_image_exactly_once():
    shards = [evaluation_shard(7, 3, r) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path: Path, caplog):
    for step in (10, 20):
        save_checkpoint({"model": {"w": torch.tensor([float(step)])}, "step": step}, tmp_path, step, keep=3)
    newest = tmp_path / "checkpoint-000000020.pt"
    newest.write_bytes(newest.read_bytes()[:50])
    with caplog.at_level(logging.WARNING):
        path, state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 10 and path.name == "checkpoint-000000010.pt"
    assert "checkpoint-000000020.pt is unreadable" in caplog.text


def test_only_the_newest_checkpoints_are_kept_and_no_temp_files_remain(tmp_path: Path):
    for step in range(1, 6):
        save_checkpoint({"model": {}, "step": step}, tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000000004.pt", "checkpoint-000000005.pt"]


def test_resume_position_at_the_end_of_an_epoch_yields_nothing_rather_than_failing():
    sampler = ResumableDistributedSampler(21, seed=0)
    sampler.set_epoch(0, start_index=24)  # 6 full batches of 4 were taken from 21 images
    assert len(sampler) == 0 and list(sampler) == []
