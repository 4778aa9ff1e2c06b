"""Torch datasets over image folders: a user's (any format, through PIL) and the prepared splits (checked
against manifest.csv, decoded by torchvision.io), and a split decoded once into RAM."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image

from imgcls.data.loaders import worker_count
from imgcls.data.transforms import eval_crop


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
            "re-create it with `dvc repro prepare` (or `dvc checkout data/prepared`)"
        ) from error


def read_image(path: str) -> torch.Tensor:
    """ImageFolder loader for prepared splits: the file decoded by torchvision.io straight into a uint8 RGB
    tensor (libjpeg-turbo/libpng, no PIL round trip), naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        with (
            warnings.catch_warnings()
        ):  # torchvision 0.29 deprecates its decoders for TorchCodec's: one per image
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(data, mode=ImageReadMode.RGB)
    except (OSError, RuntimeError) as error:
        raise UnreadableImageError(
            f"cannot read {path}: {error}. The prepared data changed after the prepare stage; "
            "re-create it with `dvc repro prepare` (or `dvc checkout data/prepared`)"
        ) from error


def image_folder(root: str, transform, loader=load_rgb) -> datasets.ImageFolder:
    """An ImageFolder; `load_rgb` (PIL: any format a user brings) or `read_image` (prepared JPEG/PNG)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} not found: it is made by the prepare stage (`dvc repro prepare`)")
    return datasets.ImageFolder(root, transform=transform, loader=loader)


def split_folder(prepared: str | Path, split: str, transform) -> datasets.ImageFolder:
    """One prepared split, checked file by file against manifest.csv: nothing missing, nothing added."""
    prepared = Path(prepared)
    manifest = prepared / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} not found: it is made by the prepare stage (`dvc repro prepare`)"
        )
    with open(manifest, newline="", encoding="utf-8") as f:
        expected = {row["file"] for row in csv.DictReader(f) if row["split"] == split}
    dataset = image_folder(str(prepared / split), transform, loader=read_image)
    found = {Path(path).relative_to(prepared).as_posix() for path, _ in dataset.samples}
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise UnreadableImageError(
            f"{prepared / split} no longer matches {manifest}: missing {missing[:10]}, unexpected "
            f"{extra[:10]}"
            f" ({len(missing)} missing, {len(extra)} unexpected). Re-create it with `dvc repro prepare` "
            "(or `dvc checkout data/prepared`)"
        )
    return dataset


class DecodedImages(Dataset):
    """An ImageFolder decoded once into uint8 tensors in RAM (`train.cache_images`): later epochs only crop
    and flip. The same pixels and the same transform as reading the files, so the same batches. Worker
    processes share the tensors (fork, copy-on-write)."""

    def __init__(self, dataset: datasets.ImageFolder, num_workers: int):
        check_memory(dataset.loader(dataset.samples[0][0]).numel() * len(dataset), dataset.root)
        transform, dataset.transform = dataset.transform, None
        loader = DataLoader(dataset, batch_size=64, num_workers=worker_count(num_workers), collate_fn=list)
        try:
            # clone: a tensor from a worker lives in shared memory holding a file descriptor, one per image
            self.images = [image.clone() for batch in loader for image, _ in batch]
        finally:
            dataset.transform = transform
        self.targets, self.transform = [target for _, target in dataset.samples], transform
        self.classes, self.root, self.samples = dataset.classes, dataset.root, dataset.samples
        self.nbytes = sum(image.numel() for image in self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.targets[index]


def check_memory(needed: int, root: str) -> None:
    """Refuse a RAM cache estimated at more than half of the memory available now (Linux; elsewhere: no
    check).
    """
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return
    available = next(
        (
            int(line.split()[1]) * 1024
            for line in meminfo.read_text().splitlines()
            if line.startswith("MemAvailable:")
        ),
        None,
    )
    if available and needed > available // 2:
        raise ValueError(
            f"train.cache_images: decoding {root} would take about {needed / 2**30:.1f} GiB, more than "
            f"half of the {available / 2**30:.1f} GiB available; set train.cache_images: false "
            "(or a smaller prepare.image_size)"
        )


def model_split(prepared: str | Path, split: str, checkpoint: dict) -> datasets.ImageFolder:
    """A prepared split as the model in `checkpoint` sees it (its evaluation crop), with its classes."""
    dataset = split_folder(prepared, split, eval_crop(checkpoint["preprocessing"]))
    if dataset.classes != checkpoint["class_names"]:
        raise ValueError(
            f"{prepared}/{split} classes {dataset.classes} differ from the model's "
            f"{checkpoint['class_names']}; re-run `dvc repro`"
        )
    return dataset
