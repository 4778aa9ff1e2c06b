"""Forward passes without gradients: the logits of a loader; validation loss and accuracy. Torch only."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from imgcls.data.transforms import to_model_input
from imgcls.engine import distributed, launch


def autocast(device: torch.device):
    """bf16 autocast on CUDA; none on CPU, where it is far slower."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def collect_logits(
    model, loader, device, memory_format=torch.contiguous_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits as float32 on CPU, targets) for every batch of `loader`."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        with autocast(device):
            logits = model(to_model_input(images, device, memory_format))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)


def validate(model, loader, loss_fn, device, memory_format=torch.contiguous_format) -> dict:
    """Mean loss and accuracy over `loader`, summed over every rank's share in a distributed run."""
    logits, targets = collect_logits(model, loader, device, memory_format)
    loss, correct = loss_fn(logits, targets).item(), (logits.argmax(1) == targets).sum().item()
    if launch.current().size == 1:
        return {"loss": loss, "accuracy": correct / len(targets)}
    totals = distributed.sum_all(
        torch.tensor([loss * len(targets), correct, len(targets)], dtype=torch.float64, device=device)
    ).tolist()
    return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}
