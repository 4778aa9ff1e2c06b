"""The training checkpoint: one typed state, saved whole and loaded whole (nanoGPT's checkpoint dict, with
names). Resuming is: load it, hand it to `fit`, which puts every piece back. Torch only.

The same state saved at epoch E, step S and resumed gives the same weights, bit for bit, as a run that never
stopped: the data order and each image's augmentation are functions of (seed, epoch, index)
(`imgcls.data.loaders.EpochSampler`), and the random generators the model itself draws from (dropout,
stochastic depth) are saved here and put back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from imgcls.files import write_serialized

FORMAT = 1  # bump when a field changes meaning: an older checkpoint is then not resumed


@dataclass
class TrainState:
    """Where training stands after `epoch - 1` whole epochs and `step` batches of epoch `epoch`."""

    model: dict  # the unwrapped model's state dict (the head alone on cached features)
    optimizer: dict
    scheduler: dict
    stopper: dict  # EarlyStopping's record: best value, best epoch, best weights
    history: list[dict]  # one row per finished epoch (no timings: a checkpoint is reproducible)
    epoch: int  # the epoch to run next, or the one in progress (1-based)
    step: int = 0  # batches of `epoch` already done
    sums: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "seen": 0})  # of those batches
    rng: dict = field(default_factory=dict)  # Python, NumPy, torch CPU and CUDA, the train loader's generator
    finished: bool = False  # the last epoch ran or early stopping ended the run
    meta: dict = field(default_factory=dict)  # the stage's: what the run was made from, its MLflow run
    format: int = FORMAT


def save_state(path: str | Path, state: TrainState, meta: dict | None = None) -> None:
    """`state` (with the stage's `meta`, if given) atomically: a kill while saving leaves the previous
    checkpoint, never half of one. The fields are saved as they are (dataclasses.asdict would deep-copy every
    tensor of the model and optimizer first)."""
    if meta is not None:
        state.meta = meta
    fields_ = {f.name: getattr(state, f.name) for f in fields(state)}
    write_serialized(path, lambda buffer: torch.save(fields_, buffer))


def load_state(path: str | Path) -> TrainState:
    """A saved state (plain tensors and Python values only: loaded with weights_only=True)."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    known = {f.name for f in fields(TrainState)}
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not known >= set(raw):
        raise ValueError(f"{path} is not a training checkpoint of format {FORMAT}")
    return TrainState(**raw)


def capture_rng(loader_generator: torch.Generator | None = None) -> dict:
    """Every random generator training may draw from, as plain values."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": _plain(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def restore_rng(state: dict, loader_generator: torch.Generator | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def _plain(value):
    """Tuples as lists, recursively (a checkpoint holds only what weights_only loading accepts)."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value
