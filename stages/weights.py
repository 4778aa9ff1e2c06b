"""Where starting weights come from: torchvision's ImageNet weights, a local file, or nothing."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
from torchvision.models import get_model_weights

from stages.imagefolder import sha256_file


class WeightsError(RuntimeError):
    """Starting weights cannot be had as configured; the message lists the ways out."""


def imagenet_cache_path(arch: str) -> tuple[Path, str]:
    """(file torchvision loads for `arch`'s DEFAULT weights, its download URL)."""
    weights = get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url), weights.url


def load_imagenet(arch: str, download: bool) -> tuple[dict, dict]:
    """(state_dict, provenance) of torchvision's DEFAULT ImageNet weights for `arch`."""
    path, url = imagenet_cache_path(arch)
    weights = get_model_weights(arch).DEFAULT
    ways_out = (f"Put the file there (download {url} on a machine with network, or set TORCH_HOME to "
                "a folder whose hub/checkpoints/ holds it), or set pretrain.source: file with pretrain.file: "
                "<path to a .pth>, or pretrain.source: dataset | none")
    if not path.is_file() and not download:
        raise WeightsError(f"pretrain.source=imagenet: {path} is not cached and pretrain.download is false. "
                           + ways_out)
    if path.is_file():
        _check_hash_prefix(path)
    try:
        # Uses the cached file when present; otherwise downloads once with torchvision's hash check.
        state_dict = weights.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as error:
        raise WeightsError(f"pretrain.source=imagenet: could not get {path} ({error}). " + ways_out) from error
    return state_dict, {"source": "imagenet", "origin": f"torchvision {weights}", "url": url,
                        "file": str(path), "origin_sha256": sha256_file(path)}


def load_file(path: str | None) -> tuple[dict, dict]:
    """(state_dict, provenance) of a local torchvision-style state dict, read with weights_only=True."""
    if not path:
        raise WeightsError("pretrain.source=file needs pretrain.file: the path to a .pth state dict")
    if not Path(path).is_file():
        raise WeightsError(f"pretrain.file={path} does not exist; give the path to a local .pth state dict")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"pretrain.file={path} is not a state dict (a mapping of names to tensors)")
    return state, {"source": "file", "origin": str(Path(path).resolve()), "origin_sha256": sha256_file(path)}


def _check_hash_prefix(path: Path) -> None:
    """torchvision file names end in the first hex digits of their SHA-256; torch checks them only on download."""
    stem = path.stem.rsplit("-", 1)
    if len(stem) == 2 and not sha256_file(path).startswith(stem[1]):
        raise WeightsError(f"{path} does not match the SHA-256 prefix '{stem[1]}' in its name: the file is "
                           "corrupt or not the one torchvision published. Delete it and fetch it again")
