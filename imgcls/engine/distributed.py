"""Training on several processes with PyTorch's own engine: torchrun starts them, DistributedDataParallel
keeps their weights in step, and the loop needs four collectives (sum, agree, broadcast, barrier). A process
that torchrun did not start is a world of one, where every helper is a no-op. Torch only.

Rank 0 is the only writer (checkpoint, model, metrics, MLflow run); every rank computes. With static
rendezvous rank 0 lives on node 0, the node where `dvc repro` runs.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from imgcls.engine.launch import World, current

log = logging.getLogger("distributed")


def init(backend: str, device: torch.device, timeout_s: float) -> tuple[World, torch.device]:
    """Join the process group (under torchrun); returns the world and this rank's device (its own GPU). A rank
    that waits longer than `timeout_s` for the others in any collective fails instead of hanging."""
    world = current()
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(backend, timeout=timeout, **attempt_store(world, timeout))
    log.info(
        "rank %d of %d (local rank %d, pid %d) on %s over %s",
        world.rank,
        world.size,
        world.local_rank,
        os.getpid(),
        device,
        backend,
    )
    return world, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` in a world of several processes; `model` itself otherwise. The
    caller keeps `model` (torchvision references' `model_without_ddp`) to save and to load state into."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def sum_all(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over every rank (the tensor itself in a world of one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def agree(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, on every rank: early stopping stops all of them at the same epoch."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    decision = torch.tensor([int(flag)], device=device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def broadcast_object(value):
    """Rank 0's `value` on every rank (a checkpoint to resume from, which only node 0 may have on disk)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_rows(part: torch.Tensor, device: torch.device, dim: int = 0) -> torch.Tensor:
    """Every rank's `part` joined along `dim` in rank order, on every rank (shares may differ in length by
    one: each is padded to the longest for the collective, then trimmed). The collective runs on `device`
    (NCCL needs the GPU); the result is on `part`'s device."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return part
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([part.shape[dim]], device=device))
    longest = max(int(size) for size in sizes)
    padding = [0, 0] * (part.dim() - dim - 1) + [0, longest - part.shape[dim]]
    padded = nn.functional.pad(part.to(device), padding)
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g.narrow(dim, 0, int(size)) for g, size in zip(gathered, sizes)], dim).to(part.device)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def attempt_store(world: World, timeout: timedelta) -> dict:
    """The rendezvous store for this attempt's process group. torchrun's static rendezvous keeps one store
    (its agent's, at MASTER_ADDR:MASTER_PORT) across restarts, so the ranks of a restart would read the
    addresses the dead attempt's ranks left there and fail to connect; each attempt gets keys of its own
    (TORCHELASTIC_RESTART_COUNT). Empty (env:// as usual) when no torchrun agent hosts the store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world.size,
        is_master=False,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {
        "store": dist.PrefixStore(f"imgcls/attempt_{attempt}", store),
        "rank": world.rank,
        "world_size": world.size,
    }
