"""An image to the model's input: the evaluation crop, the training crop and flip, and the normalisation that
runs on the device; and the spec that writes it all down for an export."""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_model_input(
    batch: torch.Tensor, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """A loader batch -> the model's input on `device`. uint8 images cross to the device as uint8 (4x fewer
    bytes than float32) and become float and normalised there; float batches (cached features) just move."""
    batch = batch.to(device, non_blocking=True)
    if batch.dtype != torch.uint8:
        return batch
    images = F.to_dtype(batch.contiguous(memory_format=memory_format), torch.float32, scale=True)
    return F.normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def preprocessing_spec(crop_size: int) -> dict:
    """Everything a caller needs to turn an image into the model's input tensor."""
    return {
        "resize_short_side": crop_size,
        "center_crop": crop_size,
        "interpolation": "bilinear",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "value_range": "0..1 before normalisation",
    }


def eval_crop(spec: dict) -> v2.Compose:
    """Image -> uint8 CHW tensor, resized and center-cropped (loaders; `to_model_input` finishes on the
    device).
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(spec["resize_short_side"], antialias=True),
            v2.CenterCrop(spec["center_crop"]),
        ]
    )


def eval_transform(spec: dict) -> v2.Compose:
    """One image -> the model's float32 input (serving and predict: images one by one, on the CPU)."""
    return v2.Compose(
        [eval_crop(spec), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec["mean"], spec["std"])]
    )


class TrainCrop:
    """Image (PIL or uint8 CHW tensor) -> augmented uint8 CHW tensor, normalised later on the device by
    `to_model_input`: torchvision's RandomResizedCrop then RandomHorizontalFlip, the same random draws and the
    same pixels, called as kernels. Composed as v2 transforms, the wrapping alone (pytree flattening,
    tv_tensor subclasses) cost about a quarter of the transform's time at 224 px
    (benchmarks/train_throughput.py)."""

    def __init__(self, crop_size: int, scale_min: float, hflip: bool):
        self.crop = v2.RandomResizedCrop(crop_size, scale=(scale_min, 1.0), antialias=True)
        self.size, self.hflip = [crop_size, crop_size], hflip

    def __call__(self, image) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            image = F.pil_to_tensor(image)
        box = self.crop.make_params([image])
        image = F.resized_crop_image(
            image, box["top"], box["left"], box["height"], box["width"], self.size, antialias=True
        )
        if self.hflip and torch.rand(1) < 0.5:  # v2.RandomHorizontalFlip's draw: flip when below p = 0.5
            image = F.horizontal_flip_image(image)
        return image


def train_transform(crop_size: int, scale_min: float, hflip: bool) -> TrainCrop:
    """Image -> augmented uint8 CHW tensor (normalised later, on the device, by `to_model_input`)."""
    return TrainCrop(crop_size, scale_min, hflip)
