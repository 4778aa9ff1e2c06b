"""How to train, as data and the objects made from it: the recipe, the optimiser, the learning-rate schedule,
early stopping and the seeds. Torch only."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float,
):
    """SGD or AdamW over the trainable parameters. AdamW runs its fused kernel on CPU and CUDA alike: one pass
    per step, not one per tensor, and on the CPU it takes its square roots from ATen's own vectors, where the
    unfused step calls MKL's vector math, whose bits differ between Intel and AMD processors whatever MKL is
    told (imgcls/engine/runtime.py)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup, then cosine decay to zero; stepped once per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
            value < self.best_value if self.monitor.endswith("loss") else value > self.best_value
        )
        if better:
            self.best_value, self.best_epoch = value, epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        return epoch - self.best_epoch >= self.patience

    def record(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def restore(self, record: dict) -> None:
        self.best_value, self.best_epoch, self.best_state = (
            record["best_value"],
            record["best_epoch"],
            record["best_state"],
        )


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
