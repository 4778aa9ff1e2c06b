"""ResNet building, head replacement, freezing, and self-describing checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision `arch` with a `num_classes`-way head."""
    return get_model(arch, weights=None, num_classes=num_classes)


def load_backbone(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight except the classifier head (`fc.*`), which the new task replaces."""
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}. Do the weights match model.arch?")


def freeze_backbone(model: nn.Module) -> None:
    """Train only the head: the rest keeps its weights and its BatchNorm statistics."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("fc.")


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    model.train()
    if frozen_backbone:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def save_checkpoint(path: str | Path, model: nn.Module, **meta) -> None:
    """The unwrapped model's state_dict plus plain metadata: loadable with weights_only=True."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, **meta}, path)


def load_checkpoint(path: str | Path, made_by: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: it is made by the {made_by} stage (`dvc repro {made_by}`)")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    model = build_model(checkpoint["arch"], len(checkpoint["class_names"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
