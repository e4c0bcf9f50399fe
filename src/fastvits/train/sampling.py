"""Sample order and augmentation randomness as pure functions of (seed, epoch, sample index).

This is what makes runs reproducible across process counts and across a kill and resume:

* `TrainSampler` shuffles the whole dataset with a generator seeded by (seed, epoch), cuts the order into
  global batches (one optimizer step each, all ranks and accumulation steps together) and gives rank r every
  world_size-th sample. One process with a global batch of 8 and two processes with 4 each therefore see the
  same 8 samples per step. Resuming mid-epoch drops the steps already done instead of replaying data.
* Each sample comes with its own seed, and `SeededDataset` runs the transform under that seed with the
  global RNGs of the process saved and restored around it. Augmentations do not depend on which worker or
  rank loads a sample, or on what ran before, and the training loop's RNG (dropout, drop path, mixup) is
  never disturbed by data loading.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["SeededDataset", "ShardSampler", "TrainSampler"]


class TrainSampler(Sampler[tuple[int, int]]):
    """Yields (dataset index, augmentation seed) for this rank, one epoch at a time.

    Args:
        num_samples: dataset length.
        step_size: samples per optimizer step over all ranks (batch * world_size * accumulation steps).
        rank: this process's rank.
        world_size: number of processes.
        seed: run seed.
        shuffle: shuffle the order each epoch.
    """

    def __init__(self, num_samples: int, step_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True) -> None:
        if step_size % world_size:
            raise ValueError(f"step size {step_size} is not divisible by the world size {world_size}")
        self.num_samples, self.step_size = num_samples, step_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch; the last partial global batch is dropped so every step is full."""
        return self.num_samples // self.step_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch to iterate, starting after `start_step` optimizer steps (to resume)."""
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        seeds = rng.integers(0, 2**32, size=self.num_samples, dtype=np.uint64)  # indexed by dataset index
        order = order[self.start_step * self.step_size: self.steps_per_epoch * self.step_size]
        for index in order[self.rank:: self.world_size]:
            yield int(index), int(seeds[index])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.step_size // self.world_size


class ShardSampler(Sampler[int]):
    """Every world_size-th index, in order, without padding: each sample is evaluated exactly once overall."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededDataset(Dataset):
    """Loads `dataset[index]` for keys (index, seed) with every global RNG seeded from `seed` meanwhile."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if get_worker_info() is not None:  # a loader worker: its RNGs serve nobody else, no need to restore them
            _seed_all(seed)
            return self.dataset[index]
        saved = torch.default_generator.get_state(), random.getstate(), np.random.get_state()
        _seed_all(seed)
        try:
            return self.dataset[index]
        finally:
            torch.default_generator.set_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


def _seed_all(seed: int) -> None:
    """Seed the CPU RNGs that transforms draw from (torch.manual_seed would also seed every accelerator,
    which costs more than transforming a small image)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
