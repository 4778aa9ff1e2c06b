"""The training core: one `fit` for every stage that trains (optimiser, schedule, epochs, validation, early
stopping). Torch only."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from stages.data import to_model_input
from stages.model import set_train_mode

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; none on CPU, where it is far slower."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                   device: torch.device | None = None):
    """SGD or AdamW over the trainable parameters; on CUDA AdamW's fused kernel (one launch per step, not one
    per tensor)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup, then cosine decay to zero; stepped once per batch."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, frozen_backbone=False,
                    epoch=0, log_every=20, memory_format=torch.contiguous_format) -> dict:
    """One pass over `loader`; returns mean loss, accuracy and images/s. Sums stay on the device (no host
    sync per step on CUDA); a non-finite loss stops training naming the epoch and step where it first appeared."""
    set_train_mode(model, frozen_backbone)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    seen, start = 0, time.perf_counter()
    for batch, (images, targets) in enumerate(loader, 1):
        images = to_model_input(images, device, memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device):
            logits = model(images)
            loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.detach().double() * len(targets)
        correct += (logits.detach().argmax(1) == targets).sum()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), batch, first_bad)
        seen += len(targets)
        report = batch % log_every == 0 or batch == len(loader)
        if report or device.type == "cpu":  # on the CPU the check costs nothing: stop at the bad step itself
            check_finite(first_bad, epoch)
        if report:
            log.info("epoch %d batch %d/%d loss %.4f %.1f images/s", epoch, batch, len(loader),
                     total_loss.item() / seen, seen / (time.perf_counter() - start))
    return {"loss": total_loss.item() / seen, "accuracy": correct.item() / seen,
            "images_per_s": seen / (time.perf_counter() - start)}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingDiverged(f"training diverged: the loss is not finite at epoch {epoch}, step {step}. "
                               "Lower the learning rate (train.lr / pretrain.lr), or check the starting weights")


@torch.no_grad()
def predict(model, loader, device, memory_format=torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits as float32 on CPU, targets) for every batch of `loader`."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        with autocast(device):
            logits = model(to_model_input(images, device, memory_format))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(model, loader, loss_fn, device, memory_format=torch.contiguous_format) -> dict:
    logits, targets = predict(model, loader, device, memory_format)
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


@dataclass(frozen=True)
class Recipe:
    """How to train: everything `fit` needs besides the model and the data."""
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    warmup_epochs: int
    epochs: int
    label_smoothing: float
    monitor: str | None  # None: no validation set; the last epoch is kept
    patience: int
    frozen_backbone: bool


def fit(model: nn.Module, train_loader, val_loader, recipe: Recipe, device: torch.device,
        on_epoch: Callable[[dict], None] | None = None, memory_format=torch.contiguous_format,
        compile_model: bool = False) -> tuple[list[dict], EarlyStopping | None]:
    """Train `model` (already on `device` in `memory_format`) up to `recipe.epochs`, validating each epoch
    when there is a `val_loader` and stopping early on no progress; returns the per-epoch history and the
    early-stopping record (None without validation). `compile_model`: steps run through torch.compile (the
    first epoch pays the compilation); `model` itself stays unwrapped, so its state saves as usual."""
    forward = torch.compile(model) if compile_model else model
    optimizer = make_optimizer(model, recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum, device)
    steps = len(train_loader)
    scheduler = make_scheduler(optimizer, recipe.warmup_epochs * steps, recipe.epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    stopper = EarlyStopping(recipe.monitor, recipe.patience) if val_loader is not None else None
    history: list[dict] = []
    for epoch in range(1, recipe.epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        trained = train_one_epoch(forward, train_loader, loss_fn, optimizer, scheduler, device,
                                  recipe.frozen_backbone, epoch, memory_format=memory_format)
        row = {"epoch": epoch, "train_loss": trained["loss"], "train_accuracy": trained["accuracy"]}
        if val_loader is not None:
            validated = evaluate(forward, val_loader, loss_fn, device, memory_format)
            row |= {"val_loss": validated["loss"], "val_accuracy": validated["accuracy"]}
        row |= {"lr": lr, "images_per_s": trained["images_per_s"]}
        history.append(row)
        log.info("epoch %d: %s", epoch, " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        if on_epoch:
            on_epoch(row)
        if stopper and stopper.update(epoch, row[recipe.monitor], model):
            log.info("early stop: no %s improvement for %d epochs (best epoch %d)", recipe.monitor,
                     recipe.patience, stopper.best_epoch)
            break
    return history, stopper
