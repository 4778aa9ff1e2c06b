"""Frozen-backbone training on cached features: the backbone sees each image once per view (as is, and
mirrored when `train.hflip`), and every epoch after that trains only the head on what it produced. Torch only.

The trade-off: a cached image has a fixed set of views, so random resized crops are replaced by the evaluation
crop, and dropout or stochastic depth inside the backbone stay off. With `crop_scale_min: 1.0` (the default)
only the flips remain random, and both are cached: the augmentation is the same as without the cache.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import Dataset

from imgcls.data.transforms import to_model_input
from imgcls.model.architectures import ARCHITECTURES

log = logging.getLogger("train")


def head_of(model: nn.Module, arch: str) -> nn.Module:
    """The classifier layer that `train.freeze: backbone` trains (named in the architecture table)."""
    return model.get_submodule(ARCHITECTURES[arch].head)


@torch.no_grad()
def backbone_features(
    model: nn.Module,
    arch: str,
    loader,
    device: torch.device,
    hflip: bool,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [views, images, width] as float32 on the CPU, targets) for an unshuffled `loader`: the input
    of the head, caught by a forward pre-hook, with the whole model in eval mode."""
    captured: list[torch.Tensor] = []
    hook = head_of(model, arch).register_forward_pre_hook(
        lambda _, inputs: captured.append(inputs[0].float().cpu())
    )
    model.eval()
    views = [False, True] if hflip else [False]
    features, targets = [], []
    try:
        for flip in views:
            for images, batch_targets in loader:
                images = images.flip(-1) if flip else images
                model(to_model_input(images, device, memory_format))
                if not flip:
                    targets.append(batch_targets)
            features.append(
                torch.cat(captured) if captured else torch.empty(0, head_of(model, arch).in_features)
            )
            captured.clear()
    finally:
        hook.remove()
    return torch.stack(features), torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)


class FeatureViews(Dataset):
    """Cached features as a dataset: an item draws one of its image's views from torch's RNG, which
    `SeededAugmentation` seeds per image and epoch, exactly as it does for a random transform."""

    def __init__(self, views: torch.Tensor, targets: torch.Tensor):
        if views.shape[1] != len(targets):
            raise ValueError(f"{views.shape[1]} cached feature rows for {len(targets)} targets")
        self.views, self.targets = views, targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        view = int(torch.randint(len(self.views), ())) if len(self.views) > 1 else 0
        return self.views[view, index], self.targets[index]
