"""Benchmark: how long saving the whole training state stops the training loop, blocking and behind the loop.

Usage: python benchmarks/checkpoint_stall.py [--arch resnet50] [--steps 6] [--size 64] [--batch 8]

The state of a whole-network fine-tune (the model, AdamW's two moments, early stopping's best weights, the
RNGs), as `train` checkpoints it every `train.checkpoint_every` steps: the seconds a blocking save
(`save_state`) takes, the seconds `StateWriter.save` holds the loop (copying the tensors) and the write it
leaves to its thread, and the training steps run while that write is in flight against steps with none (the
write competes for the same cores). One run, interleaved.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from imgcls.engine.state import StateWriter, TrainState, capture_rng, save_state
from imgcls.model.networks import build_model


def step(model: nn.Module, optimizer, batch: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(batch), targets).backward()
    optimizer.step()


def steps_seconds(model, optimizer, batch, targets, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, batch, targets)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch, 10).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, targets = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    step(model, optimizer, batch, targets)  # the optimizer's moments exist

    def state() -> TrainState:
        return TrainState(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler={},
            stopper={"best_state": {k: v.clone() for k, v in model.state_dict().items()}},
            history=[],
            epoch=1,
            step=1,
            rng=capture_rng(),
        )

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "checkpoint.pt"
        start = time.perf_counter()
        save_state(path, state())
        blocking = time.perf_counter() - start
        size = path.stat().st_size / 2**20
        quiet = steps_seconds(model, optimizer, batch, targets, args.steps)
        writer = StateWriter(path)
        writer.save(state())
        loud = steps_seconds(model, optimizer, batch, targets, args.steps)  # the write is in flight
        start = time.perf_counter()
        writer.close()
        left = time.perf_counter() - start
        quiet_again = steps_seconds(model, optimizer, batch, targets, args.steps)
    base = (quiet + quiet_again) / 2
    extra = writer.stalls[0] + args.steps * (loud - base) + left
    print(
        f"{args.arch} whole-network state, {size:.0f} MiB: a blocking save stops the loop {blocking:.2f} s; "
        f"StateWriter.save holds it {writer.stalls[0]:.2f} s ({blocking / writer.stalls[0]:.0f}x less) and "
        f"writes behind it. Training steps ({args.batch} x {args.size} px) while that write is in flight: "
        f"{loud:.3f} s each against {base:.3f} s with none ({loud / base:.2f}x); the write still had "
        f"{left:.2f} s to go after {args.steps} steps. In all, writing behind cost the loop {extra:.2f} s "
        f"against {blocking:.2f} s blocking ({extra / blocking:.2f}x) on these cores"
    )


if __name__ == "__main__":
    main()
