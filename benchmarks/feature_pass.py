"""Benchmark: the frozen-backbone feature pass (`train.cache_features`) on 1 process and on 2 ranks.

Usage: python benchmarks/feature_pass.py [--images 512] [--size 112] [--arch resnet18] [--batch 32]

One process with 2 threads computes the features of every image; then 2 gloo ranks with 1 thread each (the
cores split between them, as `dvc repro` runs them on a 2-core machine), first each over every image (before:
every rank paid the whole pass), then each over its own share, gathered (now). Seconds for the pass, the
gather included, measured in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.distributed as dist

from imgcls.data.loaders import make_loader
from imgcls.engine import distributed
from imgcls.engine.features import backbone_features
from imgcls.engine.finetune import own_share
from imgcls.engine.launch import World
from imgcls.model.networks import build_model


class Pictures(torch.utils.data.Dataset):
    def __init__(self, count: int, size: int):
        self.count, self.size = count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        return torch.randint(0, 256, (3, self.size, self.size), dtype=torch.uint8, generator=generator), 0


def feature_pass(args, world: World) -> float:
    torch.manual_seed(0)
    model = build_model(args.arch, 10).eval()
    dataset = Pictures(args.images, args.size)
    shared = own_share(dataset, world, args.batch) if args.shard else dataset
    loader = make_loader(shared, args.batch, False, 0, 0)
    start = time.perf_counter()
    views, _ = backbone_features(model, args.arch, loader, torch.device("cpu"), hflip=False)
    if args.shard:
        views = distributed.gather_rows(views, torch.device("cpu"), dim=1)
    assert views.shape[1] == args.images
    return time.perf_counter() - start


def rank(rank: int, args, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dist.barrier()
        seconds = feature_pass(args, World(rank, 2, rank))
        torch.save(seconds, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def two_ranks(args, shard: bool) -> float:
    args.shard = shard
    with tempfile.TemporaryDirectory() as scratch:
        torch.multiprocessing.spawn(rank, (args, f"{scratch}/store", f"{scratch}/t"), nprocs=2)
        return max(torch.load(f"{scratch}/t.{r}") for r in (0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.shard = False
    one = feature_pass(args, World())
    every, share = two_ranks(args, shard=False), two_ranks(args, shard=True)
    print(
        f"{args.arch}, {args.images} images at {args.size} px: 1 process (2 threads) {one:.1f} s; 2 ranks (1 "
        f"thread each), each over every image (before) {every:.1f} s, each over its share and gathered (now) "
        f"{share:.1f} s: {every / share:.2f}x faster, {share / one:.2f}x the one-process pass"
    )


if __name__ == "__main__":
    main()
