"""Torch datasets, transforms and loaders over prepared ImageFolder trees."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

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


def read_image(path: str) -> torch.Tensor:
    """ImageFolder loader for prepared splits: the file decoded by torchvision.io straight into a uint8 RGB
    tensor (libjpeg-turbo/libpng, no PIL round trip), naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's: one per image
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(data, mode=ImageReadMode.RGB)
    except (OSError, RuntimeError) as error:
        raise UnreadableImageError(
            f"cannot read {path}: {error}. The prepared data changed after the prepare stage; "
            "re-create it with `dvc repro prepare` (or `dvc checkout data/prepared`)") from error


def worker_count(num_workers: int) -> int:
    """Loader processes for `train.num_workers`: -1 is one per core this process may use, less one for the main
    process that drives the model, at most 16."""
    if num_workers >= 0:
        return num_workers
    return max(1, min(16, len(os.sched_getaffinity(0)) - 1))


def to_model_input(batch: torch.Tensor, device: torch.device,
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A loader batch -> the model's input on `device`. uint8 images cross to the device as uint8 (4x fewer
    bytes than float32) and become float and normalised there; float batches (cached features) just move."""
    batch = batch.to(device, non_blocking=True)
    if batch.dtype != torch.uint8:
        return batch
    images = F.to_dtype(batch.contiguous(memory_format=memory_format), torch.float32, scale=True)
    return F.normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def preprocessing_spec(crop_size: int) -> dict:
    """Everything a caller needs to turn an image into the model's input tensor."""
    return {"resize_short_side": crop_size, "center_crop": crop_size, "interpolation": "bilinear",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channel_order": "RGB",
            "layout": "NCHW", "dtype": "float32", "value_range": "0..1 before normalisation"}


def eval_crop(spec: dict) -> v2.Compose:
    """Image -> uint8 CHW tensor, resized and center-cropped (loaders; `to_model_input` finishes on the device)."""
    return v2.Compose([v2.ToImage(), v2.Resize(spec["resize_short_side"], antialias=True),
                       v2.CenterCrop(spec["center_crop"])])


def eval_transform(spec: dict) -> v2.Compose:
    """One image -> the model's float32 input (serving and predict: images one by one, on the CPU)."""
    return v2.Compose([eval_crop(spec), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec["mean"], spec["std"])])


class TrainCrop:
    """Image (PIL or uint8 CHW tensor) -> augmented uint8 CHW tensor, normalised later on the device by
    `to_model_input`: torchvision's RandomResizedCrop then RandomHorizontalFlip, the same random draws and the
    same pixels, called as kernels. Composed as v2 transforms, the wrapping alone (pytree flattening, tv_tensor
    subclasses) cost about a quarter of the transform's time at 224 px (benchmarks/train_throughput.py)."""

    def __init__(self, crop_size: int, scale_min: float, hflip: bool):
        self.crop = v2.RandomResizedCrop(crop_size, scale=(scale_min, 1.0), antialias=True)
        self.size, self.hflip = [crop_size, crop_size], hflip

    def __call__(self, image) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            image = F.pil_to_tensor(image)
        box = self.crop.make_params([image])
        image = F.resized_crop_image(image, box["top"], box["left"], box["height"], box["width"], self.size,
                                     antialias=True)
        if self.hflip and torch.rand(1) < 0.5:  # v2.RandomHorizontalFlip's draw: flip when below p = 0.5
            image = F.horizontal_flip_image(image)
        return image


def train_transform(crop_size: int, scale_min: float, hflip: bool) -> TrainCrop:
    """Image -> augmented uint8 CHW tensor (normalised later, on the device, by `to_model_input`)."""
    return TrainCrop(crop_size, scale_min, hflip)


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
        raise FileNotFoundError(f"{manifest} not found: it is made by the prepare stage (`dvc repro prepare`)")
    with open(manifest, newline="", encoding="utf-8") as f:
        expected = {row["file"] for row in csv.DictReader(f) if row["split"] == split}
    dataset = image_folder(str(prepared / split), transform, loader=read_image)
    found = {Path(path).relative_to(prepared).as_posix() for path, _ in dataset.samples}
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise UnreadableImageError(
            f"{prepared / split} no longer matches {manifest}: missing {missing[:10]}, unexpected {extra[:10]}"
            f" ({len(missing)} missing, {len(extra)} unexpected). Re-create it with `dvc repro prepare` "
            "(or `dvc checkout data/prepared`)")
    return dataset


class DecodedImages(Dataset):
    """An ImageFolder decoded once into uint8 tensors in RAM (`train.cache_images`): later epochs only crop and
    flip. The same pixels and the same transform as reading the files, so the same batches. Worker processes
    share the tensors (fork, copy-on-write)."""

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
    """Refuse a RAM cache estimated at more than half of the memory available now (Linux; elsewhere: no check)."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return
    available = next((int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                      if line.startswith("MemAvailable:")), None)
    if available and needed > available // 2:
        raise ValueError(f"train.cache_images: decoding {root} would take about {needed / 2**30:.1f} GiB, more than "
                         f"half of the {available / 2**30:.1f} GiB available; set train.cache_images: false "
                         "(or a smaller prepare.image_size)")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one image in one epoch (index -1: the epoch's shuffle)."""
    return int(np.random.SeedSequence([seed, epoch, index + 1]).generate_state(1)[0])


class EpochSampler(Sampler):
    """One epoch's order, each index paired with its own augmentation seed, both derived from (seed, epoch,
    index) alone: which worker, how many workers, or where a run resumed cannot change an image's crop.

    Across `world` processes it is DistributedSampler's split: the order is padded to a multiple of `world`
    (repeating its first indices) and rank r takes every world-th index from r, so one step of `world` ranks
    with batch b sees the images one process with batch `world * b` would. Unshuffled (evaluation), nothing is
    padded: no image counts twice. `set_epoch(epoch, skip)` starts the epoch `skip` indices in (a resumed run)."""

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
            order += order[:(self.world - self.size % self.world) % self.world]
        return order[self.rank::self.world]

    def __len__(self) -> int:
        shard = -(-self.size // self.world) if self.shuffle else len(range(self.rank, self.size, self.world))
        return max(0, shard - self.skip)

    def __iter__(self):
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in self._indices()[self.skip:]])


class SeededAugmentation(Dataset):
    """Wraps a dataset whose transform draws from torch's global RNG: item (index, seed) runs it under `seed`."""

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


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, rank: int = 0,
                world: int = 1) -> DataLoader:
    """Batches of `dataset` (this rank's share of them); with `shuffle` (training) a seeded order and per-image
    augmentation seeds, and the last batch dropped when partial (a batch of one breaks BatchNorm). Call
    `loader.sampler.set_epoch(epoch)`. The loader draws its workers' seeds from a generator of its own, never
    from torch's global one, which dropout in the model draws from. `num_workers`: see `worker_count`."""
    num_workers = worker_count(num_workers)
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world)
    drop_last = shuffle and len(sampler) > batch_size
    return DataLoader(SeededAugmentation(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))
