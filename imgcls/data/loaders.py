"""Loaders whose order and augmentation are functions of (seed, epoch, image) alone: the worker count, the
number of processes, or where a run resumed cannot change a batch."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def worker_count(num_workers: int) -> int:
    """Loader processes for `runtime.num_workers`: -1 is one per core this process may use, less one for the
    main process that drives the model, at most 16."""
    if num_workers >= 0:
        return num_workers
    return max(1, min(16, len(os.sched_getaffinity(0)) - 1))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one image in one epoch (index -1: the epoch's shuffle)."""
    return int(np.random.SeedSequence([seed, epoch, index + 1]).generate_state(1)[0])


class EpochSampler(Sampler):
    """One epoch's order, each index paired with its own augmentation seed, both derived from (seed, epoch,
    index) alone: which worker, how many workers, or where a run resumed cannot change an image's crop.

    Across `world` processes it is DistributedSampler's split: the order is padded to a multiple of `world`
    (repeating its first indices) and rank r takes every world-th index from r, so one step of `world` ranks
    with batch b sees the images one process with batch `world * b` would. Unshuffled (evaluation), nothing is
    padded: no image counts twice. `set_epoch(epoch, skip)` starts the epoch `skip` indices in (a resumed
    run)."""

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.size, generator=generator).tolist()
            order += order[: (self.world - self.size % self.world) % self.world]
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        shard = -(-self.size // self.world) if self.shuffle else len(range(self.rank, self.size, self.world))
        return max(0, shard - self.skip)

    def __iter__(self):
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in self._indices()[self.skip :]])


class SeededAugmentation(Dataset):
    """A dataset whose transform uses torch's global RNG: item (index, seed) runs it under that seed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        # Only the CPU generator: transforms draw from it alone, and torch.manual_seed would also queue a CUDA
        # seeding with a formatted stack trace (about 0.5 ms an image, more than decoding a small JPEG).
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


def make_loader(
    dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, rank: int = 0, world: int = 1
) -> DataLoader:
    """Batches of `dataset` (this rank's share of them); with `shuffle` (training) a seeded order and per-
    image augmentation seeds, and the last batch dropped when partial (a batch of one breaks BatchNorm). Call
    `loader.sampler.set_epoch(epoch)`. The loader draws its workers' seeds from a generator of its own, never
    from torch's global one, which dropout in the model draws from. `num_workers`: see `worker_count`."""
    num_workers = worker_count(num_workers)
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world)
    drop_last = shuffle and len(sampler) > batch_size
    return DataLoader(
        SeededAugmentation(dataset),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )
