"""The training loop on tiny tensors: a diverging loss stops training at once and says where."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from imgcls.engine.loop import TrainingDiverged, train_one_epoch
from imgcls.engine.recipe import make_optimizer, make_scheduler


def test_non_finite_loss_stops_training_naming_epoch_and_step():
    model = nn.Linear(4, 2)
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=8)
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.0, 0.0)
    scheduler = make_scheduler(optimizer, 0, 4)
    calls = []

    def loss_fn(logits, targets):  # finite for two steps, then NaN
        calls.append(1)
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if len(calls) >= 3 else loss

    with pytest.raises(TrainingDiverged, match=r"not finite at epoch 7, step 3"):
        train_one_epoch(model, loader, loss_fn, optimizer, scheduler, torch.device("cpu"), epoch=7)
    assert len(calls) == 3  # stopped at the bad step, not at the end of the epoch
