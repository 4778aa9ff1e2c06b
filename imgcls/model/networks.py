"""torchvision classifiers: built by name, their head replaced, their backbone loaded or frozen."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import get_model

from imgcls.model.architectures import ARCHITECTURES


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision `arch` with a `num_classes`-way head."""
    return get_model(arch, weights=None, num_classes=num_classes)


def head_prefix(arch: str) -> str:
    return ARCHITECTURES[arch].head + "."


def head_classes(arch: str, state_dict: dict[str, torch.Tensor]) -> int | None:
    """How many classes a state dict's head predicts (None when it has no head for `arch`)."""
    weight = state_dict.get(head_prefix(arch) + "weight")
    return int(weight.shape[0]) if weight is not None else None


def load_backbone(model: nn.Module, arch: str, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight except the classifier head, which the new task replaces."""
    head = head_prefix(arch)
    backbone = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Do the weights match model.arch?"
        )


def freeze_backbone(model: nn.Module, arch: str) -> None:
    """Train only the head: the rest keeps its weights and its BatchNorm statistics."""
    head = head_prefix(arch)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(head)


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    model.train()
    if frozen_backbone:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def starting_model(
    arch: str, class_names: list[str], backbone: dict[str, torch.Tensor], freeze: str, source: str
) -> nn.Module:
    """`arch` with a head for `class_names`, the starting weights' backbone loaded (`source` names them in
    errors), the backbone frozen when `freeze` is `backbone`."""
    model = build_model(arch, len(class_names))
    load_backbone(model, arch, backbone, source)
    if freeze == "backbone":
        freeze_backbone(model, arch)
    return model
