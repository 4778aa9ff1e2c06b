"""The training checkpoint: one typed state, saved whole and loaded whole (nanoGPT's checkpoint dict, with
names). Resuming is: load it, hand it to `fit`, which puts every piece back. Torch only.

The same state saved at epoch E, step S and resumed gives the same weights, bit for bit, as a run that never
stopped: the data order and each image's augmentation are functions of (seed, epoch, index)
(`imgcls.data.loaders.EpochSampler`), and the random generators the model itself draws from (dropout,
stochastic depth) are saved here and put back.
"""

from __future__ import annotations

import copy
import random
import threading
import time
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


class StateWriter:
    """Saves training states, with `behind` without stopping the loop for the write: `save(state)` copies the
    state's tensors (the loop's only stall: a memory copy), then a thread of its own serializes the copy
    and writes it atomically while training goes on. One write at a time: a save waits for the one before
    it to finish. A failed write is raised by the next `save` or by `close`, which waits for the last one;
    a process killed mid-write leaves the previous checkpoint whole. Without `behind` it is `save_state`.
    The train stage writes behind on a GPU, whose host cores are idle while it trains; on a CPU those
    cores would both train and write, and writing behind cost more in all than a blocking save
    (benchmarks/checkpoint_stall.py)."""

    def __init__(self, path: str | Path, meta: dict | None = None, behind: bool = True):
        self.path, self.meta, self.behind = path, meta, behind
        self.stalls: list[float] = []  # seconds each save held the loop
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: TrainState) -> None:
        start = time.perf_counter()
        self.close()
        if not self.behind:
            save_state(self.path, state, self.meta)
            self.stalls.append(time.perf_counter() - start)
            return
        if self.meta is not None:
            state.meta = self.meta
        snapshot = {f.name: _copy(getattr(state, f.name)) for f in fields(state)}
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name="checkpoint-writer")
        self._thread.start()
        self.stalls.append(time.perf_counter() - start)

    def _write(self, snapshot: dict) -> None:
        try:
            write_serialized(self.path, lambda buffer: torch.save(snapshot, buffer))
        except BaseException as error:  # noqa: BLE001 - handed to the training thread, which raises it
            self._error = error

    def close(self) -> None:
        """Wait for the write in progress; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _copy(value):
    """`value` with every tensor copied to the CPU (the optimizer changes the live ones in place)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):  # a state dict is an OrderedDict with _metadata: copy.copy keeps both
        copied = copy.copy(value)
        for key, item in value.items():
            copied[key] = _copy(item)
        return copied
    if isinstance(value, list | tuple):
        return type(value)(_copy(item) for item in value)
    return value


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
