"""Self-describing checkpoints: the unwrapped model's state_dict with plain metadata (arch, class names,
preprocessing, params, provenance), saved atomically and loaded with weights_only=True."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from imgcls.files import write_serialized
from imgcls.model.networks import build_model


def save_checkpoint(path: str | Path, model: nn.Module, **meta) -> None:
    """The unwrapped model's state_dict plus plain metadata: loadable with weights_only=True. Written
    atomically: a kill or a full disk leaves the old file or none, never half of one."""
    state = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }
    write_serialized(path, lambda buffer: torch.save({"state_dict": state, **meta}, buffer))


class CheckpointError(ValueError):
    """A checkpoint file that is not one this pipeline wrote."""


def load_checkpoint(path: str | Path, made_by: str) -> dict:
    """A checkpoint the `made_by` stage wrote: plain tensors and values only (weights_only=True: a pickled
    object is refused, never run), with a state dict; anything else is one line that names the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} not found: it is made by the {made_by} stage (`dvc repro {made_by}`)"
        )
    remake = f"re-create it with `dvc repro --force {made_by}` (or restore it: `dvc checkout {path}`)"
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it then refuses
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} is not a checkpoint of plain tensors (a pickled Python object, or no "
            f"torch.save archive): unpickling it could run code, so it is not loaded; {remake}"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({str(error).splitlines()[0][:100]}); {remake}"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a checkpoint of the {made_by} stage (no state dict); {remake}")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    model = build_model(checkpoint["arch"], len(checkpoint["class_names"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
