"""The training core: optimiser, schedule, one epoch, evaluation, early stopping. Torch only."""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from stages.model import set_train_mode

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for `cuda` without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device; set train.device: auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def configure_determinism(device: torch.device, deterministic: bool) -> None:
    """CPU kernels here are deterministic for a fixed thread count. On CUDA, `deterministic` turns on
    PyTorch's deterministic algorithms; ops without one then warn (naming the op) instead of failing."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # autotuned kernels: faster, not repeatable


def nondeterministic_ops(caught: list[warnings.WarningMessage]) -> list[str]:
    """The ops PyTorch reported as lacking a deterministic implementation, from recorded warnings."""
    return sorted({str(w.message).split(" does not have a deterministic")[0] for w in caught
                   if "does not have a deterministic implementation" in str(w.message)})


def autocast(device: torch.device):
    """bf16 autocast on CUDA; none on CPU, where it is far slower."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    parameters = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup, then cosine decay to zero; stepped once per batch."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, frozen_backbone=False,
                    epoch=0, log_every=20) -> dict:
    """One pass over `loader`; returns mean loss, accuracy and images/s."""
    set_train_mode(model, frozen_backbone)
    total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    for batch, (images, targets) in enumerate(loader, 1):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device):
            logits = model(images)
            loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
        if batch % log_every == 0 or batch == len(loader):
            log.info("epoch %d batch %d/%d loss %.4f %.1f images/s", epoch, batch, len(loader),
                     total_loss / seen, seen / (time.perf_counter() - start))
    return {"loss": total_loss / seen, "accuracy": correct / seen,
            "images_per_s": seen / (time.perf_counter() - start)}


@torch.no_grad()
def predict(model, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits as float32 on CPU, targets) for every batch of `loader`."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        with autocast(device):
            logits = model(images.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(model, loader, loss_fn, device) -> dict:
    logits, targets = predict(model, loader, device)
    return {"loss": loss_fn(logits, targets).item(),
            "accuracy": (logits.argmax(1) == targets).float().mean().item()}


@dataclass
class EarlyStopping:
    """Tracks the best epoch on `monitor` and says when `patience` epochs brought nothing better."""
    monitor: str
    patience: int
    best_value: float | None = None
    best_epoch: int = 0
    best_state: dict = field(default_factory=dict)

    def update(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        better = self.best_value is None or (
            value < self.best_value if self.monitor.endswith("loss") else value > self.best_value)
        if better:
            self.best_value, self.best_epoch = value, epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        return epoch - self.best_epoch >= self.patience
