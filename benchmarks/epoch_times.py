"""What an epoch costs on this machine at the image sizes a user picks: seconds per epoch per 1,000 training
images, for full fine-tuning (`train.freeze: none`) and for a frozen backbone on cached features (its one
feature pass), per crop size. Prints figures; asserts nothing.

Usage: python benchmarks/epoch_times.py [--sizes 64 112 224] [--images 256] [--arch resnet18] [--pinned]

The images are decoded uint8 pictures in memory (decoding adds ~1-3 ms an image on a CPU, next to tens of ms
for the model at 112 px and up), cropped and flipped by the pipeline's own transform, in batches of 32,
through the pipeline's own training step (imgcls.engine.loop.train_one_epoch)."""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imgcls.data.transforms import train_transform
from imgcls.engine import runtime
from imgcls.engine.inference import collect_logits
from imgcls.engine.loop import train_one_epoch
from imgcls.engine.recipe import make_optimizer, make_scheduler
from imgcls.model.networks import build_model, freeze_backbone


class Pictures(Dataset):
    """Random uint8 pictures of `side` px (short side), 10 classes."""

    def __init__(self, count: int, side: int, crop: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(
            0, 256, (count, 3, side, side * 4 // 3), dtype=torch.uint8, generator=generator
        )
        self.transform = train_transform(crop, 0.35, True)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), index % 10


def seconds_per_epoch(arch: str, crop: int, images: int, frozen: bool) -> float:
    """One epoch of `images` at `crop` px (the second of two: the first warms caches), per 1,000 images."""
    dataset = Pictures(images, crop * 8 // 7, crop)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, drop_last=True)
    model = build_model(arch, 10)
    if frozen:  # what cached features cost: one forward pass per image, then the head (~free) each epoch
        freeze_backbone(model, arch)
        start = time.perf_counter()
        collect_logits(model, DataLoader(dataset, batch_size=32), torch.device("cpu"))
        return (time.perf_counter() - start) / images * 1000
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.05, 0.9)
    scheduler = make_scheduler(optimizer, 0, 2 * len(loader))
    for _ in range(2):
        start = time.perf_counter()
        train_one_epoch(
            model, loader, nn.CrossEntropyLoss(), optimizer, scheduler, torch.device("cpu"), log_every=10**9
        )
        elapsed = time.perf_counter() - start
    return elapsed / (len(loader) * 32) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 224], help="crop sizes (px)")
    parser.add_argument("--images", type=int, default=256, help="training images timed per size")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core)")
    parser.add_argument(
        "--pinned", action="store_true", help="the pinned reproducible runtime (slower on a CPU)"
    )
    args = parser.parse_args()
    runtime.pin(args.pinned, args.threads, torch.device("cpu"))
    print(
        f"{args.arch}, {torch.get_num_threads()} threads, {'pinned' if args.pinned else 'unpinned'} kernels "
        f"({runtime.cpu_model()}, {runtime.cpu_isa()}); seconds per epoch per 1,000 training images:"
    )
    for crop in args.sizes:
        full = seconds_per_epoch(args.arch, crop, args.images, frozen=False)
        frozen = seconds_per_epoch(args.arch, crop, args.images, frozen=True)
        print(
            f"  {crop:>4} px: full fine-tuning {full:7.1f} s/epoch; frozen backbone: {frozen:6.1f} s once "
            "(the feature pass), then the head in well under a second an epoch"
        )


if __name__ == "__main__":
    main()
