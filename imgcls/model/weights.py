"""Where starting weights come from: torchvision's ImageNet weights, a local file, or nothing.

Every file is read with `torch.load(weights_only=True)` (tensors and plain containers, never code), and a bad
one is refused in one line that names it, says what it is, and what to do."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import get_model_weights

from imgcls.files import sha256_file
from imgcls.model.architectures import ARCHITECTURES
from imgcls.model.networks import build_model, head_classes, head_prefix


class WeightsError(RuntimeError):
    """Starting weights cannot be had as configured; the message lists the ways out."""


def imagenet_cache_path(arch: str) -> tuple[Path, str]:
    """(file torchvision loads for `arch`'s DEFAULT weights, its download URL)."""
    weights = get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url), weights.url


def load_imagenet(arch: str, download: bool, sha256: str | None) -> tuple[nn.Module, dict]:
    """(model, provenance) with torchvision's DEFAULT ImageNet weights for `arch`, from the torch hub cache
    (downloaded once, hash-prefix checked, when `download`)."""
    path, url = imagenet_cache_path(arch)
    ways_out = (
        f"Put the file there (download {url} on a machine with network, or set TORCH_HOME to "
        "a folder whose hub/checkpoints/ holds it), or set pretrain.source: file with pretrain.file: "
        "<path to a .pth>, or pretrain.source: dataset | none"
    )
    if not path.is_file() and not download:
        raise WeightsError(
            f"pretrain.source=imagenet: {path} is not cached and pretrain.download is false. " + ways_out
        )
    if not path.is_file():
        try:  # torch.hub checks the SHA-256 prefix in the file name while downloading
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                url, str(path), hash_prefix=path.stem.rsplit("-", 1)[-1], progress=False
            )
        except (URLError, OSError, RuntimeError) as error:
            raise WeightsError(
                f"pretrain.source=imagenet: could not get {path} ({error}). " + ways_out
            ) from None
    check_hash(path, sha256)
    state_dict = read_state_dict(path, "the torch hub cache")
    model = build_for(arch, state_dict, path)
    return model, {
        "source": "imagenet",
        "origin": f"torchvision {get_model_weights(arch).DEFAULT}",
        "url": url,
        "file": str(path),
        "origin_sha256": sha256_file(path),
    }


def load_file(path: str | None, arch: str, sha256: str | None) -> tuple[nn.Module, dict]:
    """(model, provenance) from a local torchvision-style state dict."""
    if not path:
        raise WeightsError("pretrain.source=file needs pretrain.file: the path to a .pth state dict")
    if not Path(path).is_file():
        raise WeightsError(f"pretrain.file={path} does not exist; give the path to a local .pth state dict")
    check_hash(Path(path), sha256)
    state = read_state_dict(Path(path), "pretrain.file")
    model = build_for(arch, state, Path(path))
    return model, {"source": "file", "origin": str(Path(path).resolve()), "origin_sha256": sha256_file(path)}


def check_hash(path: Path, sha256: str | None) -> None:
    """The full SHA-256 when `pretrain.sha256` pins it; else the prefix torchvision puts in its file names."""
    found = sha256_file(path)
    if sha256 and found != sha256.lower():
        raise WeightsError(
            f"{path} has sha256 {found}, not the pretrain.sha256 {sha256}: it is not the file you "
            "pinned. Fetch the right file, or update pretrain.sha256 if you changed it on purpose"
        )
    stem = path.stem.rsplit("-", 1)
    if not sha256 and len(stem) == 2 and len(stem[1]) >= 8 and not found.startswith(stem[1]):
        raise WeightsError(
            f"{path} does not match the SHA-256 prefix '{stem[1]}' in its name: the file is "
            "corrupt or not the one torchvision published. Delete it and fetch it again"
        )


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A mapping of names to tensors from `path`, or a WeightsError saying what the file is instead."""
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} ({what}) is empty (0 bytes); fetch the weights file again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise WeightsError(
                f"{path} ({what}) holds a pickled Python object (a whole model?), not a state dict; "
                "it is not loaded because unpickling runs code. Save `model.state_dict()` instead"
            ) from None
        raise WeightsError(
            f"{path} ({what}) is not a PyTorch weights file (its bytes are not a torch.save "
            "archive or pickle); point to the .pth state dict"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        with open(path, "rb") as f:
            archive = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        kind = "truncated or corrupt" if archive or isinstance(error, EOFError) else "unreadable"
        raise WeightsError(
            f"{path} ({what}) is {kind} ({str(error).splitlines()[0][:100]}); fetch it again"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a checkpoint dict, such as models/pretrained.pt
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise WeightsError(f"{path} ({what}) is not a state dict (a mapping of parameter names to tensors)")
    return state


def build_for(arch: str, state_dict: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """`arch` with `state_dict` loaded; weights made for another architecture are named as such."""
    model = build_model(arch, head_classes(arch, state_dict) or 1000)
    expected = model.state_dict()
    fits = set(state_dict) == set(expected) and all(
        state_dict[k].shape == v.shape for k, v in expected.items()
    )
    if not fits:
        made_for = [name for name in ARCHITECTURES if name != arch and fits_arch(name, state_dict)]
        what = f"made for {' or '.join(made_for)}" if made_for else "made for another architecture"
        raise WeightsError(
            f"{path} holds weights {what}, not model.arch={arch}: set model.arch to match "
            "the file, or use weights for the architecture you want"
        )
    model.load_state_dict(state_dict)
    return model


def fits_arch(arch: str, state_dict: dict[str, torch.Tensor]) -> bool:
    """Would `state_dict` load into `arch` (any head size)? Checked on the meta device: no memory used."""
    with torch.device("meta"):
        expected = build_model(arch, head_classes(arch, state_dict) or 1000).state_dict()
    head = head_prefix(arch)
    return set(state_dict) == set(expected) and all(
        state_dict[k].shape == v.shape for k, v in expected.items() if not k.startswith(head)
    )
