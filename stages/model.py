"""Building torchvision classifiers, replacing and freezing their heads, and self-describing checkpoints."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model

from stages.architectures import ARCHITECTURES
from stages.outputs import write_serialized


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
        raise ValueError(f"{source} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}. "
                         "Do the weights match model.arch?")


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


def save_checkpoint(path: str | Path, model: nn.Module, **meta) -> None:
    """The unwrapped model's state_dict plus plain metadata: loadable with weights_only=True. Written
    atomically: a kill or a full disk leaves the old file or none, never half of one."""
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    write_serialized(path, lambda buffer: torch.save({"state_dict": state, **meta}, buffer))


class CheckpointError(ValueError):
    """A checkpoint file that is not one this pipeline wrote."""


def load_checkpoint(path: str | Path, made_by: str) -> dict:
    """A checkpoint the `made_by` stage wrote: plain tensors and values only (weights_only=True: a pickled object
    is refused, never run), with a state dict; anything else is one line that names the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: it is made by the {made_by} stage (`dvc repro {made_by}`)")
    remake = f"re-create it with `dvc repro --force {made_by}` (or restore it: `dvc checkout {path}`)"
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it then refuses
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} is not a checkpoint of plain tensors (a pickled Python object, or no "
                              f"torch.save archive): unpickling it could run code, so it is not loaded; {remake}"
                              ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({str(error).splitlines()[0][:100]}); {remake}"
                              ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a checkpoint of the {made_by} stage (no state dict); {remake}")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    model = build_model(checkpoint["arch"], len(checkpoint["class_names"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
