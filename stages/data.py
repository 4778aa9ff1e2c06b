"""Torch datasets, transforms and loaders over prepared ImageFolder trees."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnreadableImageError(RuntimeError):
    """A file that was readable when `prepare` ran cannot be read now."""


def load_rgb(path: str) -> Image.Image:
    """ImageFolder loader that names the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise UnreadableImageError(
            f"cannot read {path}: {error}. The prepared data changed after the prepare stage; "
            "re-create it with `dvc repro prepare` (or `dvc checkout data/prepared`)") from error


def preprocessing_spec(crop_size: int) -> dict:
    """Everything a caller needs to turn an image into the model's input tensor."""
    return {"resize_short_side": crop_size, "center_crop": crop_size, "interpolation": "bilinear",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channel_order": "RGB",
            "layout": "NCHW", "dtype": "float32", "value_range": "0..1 before normalisation"}


def eval_transform(spec: dict) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(spec["resize_short_side"], antialias=True),
        v2.CenterCrop(spec["center_crop"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(spec["mean"], spec["std"]),
    ])


def train_transform(crop_size: int, scale_min: float, hflip: bool) -> v2.Compose:
    steps = [v2.ToImage(), v2.RandomResizedCrop(crop_size, scale=(scale_min, 1.0), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def image_folder(root: str, transform) -> datasets.ImageFolder:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} not found: it is made by the prepare stage (`dvc repro prepare`)")
    return datasets.ImageFolder(root, transform=transform, loader=load_rgb)


def split_folder(prepared: str | Path, split: str, transform) -> datasets.ImageFolder:
    """One prepared split, checked file by file against manifest.csv: nothing missing, nothing added."""
    prepared = Path(prepared)
    manifest = prepared / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: it is made by the prepare stage (`dvc repro prepare`)")
    with open(manifest, newline="", encoding="utf-8") as f:
        expected = {row["file"] for row in csv.DictReader(f) if row["split"] == split}
    dataset = image_folder(str(prepared / split), transform)
    found = {Path(path).relative_to(prepared).as_posix() for path, _ in dataset.samples}
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise UnreadableImageError(
            f"{prepared / split} no longer matches {manifest}: missing {missing[:10]}, unexpected {extra[:10]}"
            f" ({len(missing)} missing, {len(extra)} unexpected). Re-create it with `dvc repro prepare` "
            "(or `dvc checkout data/prepared`)")
    return dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one image in one epoch (index -1: the epoch's shuffle)."""
    return int(np.random.SeedSequence([seed, epoch, index + 1]).generate_state(1)[0])


class EpochSampler(Sampler):
    """One epoch's order, each index paired with its own augmentation seed, both derived from (seed, epoch,
    index) alone: which worker, how many workers, or where a run resumed cannot change an image's crop."""

    def __init__(self, size: int, shuffle: bool, seed: int):
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = range(self.size)
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.size, generator=generator).tolist()
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in order])


class SeededAugmentation(Dataset):
    """Wraps a dataset whose transform draws from torch's global RNG: item (index, seed) runs it under `seed`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    """Batches of `dataset`; with `shuffle` (training) a seeded order and per-image augmentation seeds, and the
    last batch dropped when partial (a batch of one breaks BatchNorm). Call `loader.sampler.set_epoch(epoch)`."""
    sampler = EpochSampler(len(dataset), shuffle, seed)
    drop_last = shuffle and len(dataset) > batch_size
    return DataLoader(SeededAugmentation(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available())
