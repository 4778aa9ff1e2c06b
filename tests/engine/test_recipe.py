"""The training recipe's parts on their own: the learning-rate schedule and early stopping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from imgcls.engine.recipe import EarlyStopping, make_scheduler


def lrs(warmup: int, total: int, steps: int, lr: float = 1.0) -> list[float]:
    """The learning rate each of `steps` batches trains with."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer, warmup, total)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    seen = lrs(warmup=4, total=12, steps=13)
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert seen[4] == pytest.approx(1.0)  # the first step after warmup starts the cosine at its top
    assert seen[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))  # halfway: 0.5
    assert all(a >= b for a, b in zip(seen[4:], seen[5:]))  # never rises again
    assert seen[12] == pytest.approx(0.0, abs=1e-12)  # ends at zero, and stays there past the end


def test_schedule_without_warmup_starts_at_the_full_rate():
    seen = lrs(warmup=0, total=10, steps=3, lr=0.1)
    assert seen[0] == pytest.approx(0.1) and seen[1] < seen[0]


def model_with(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    stopper = EarlyStopping(monitor="val_accuracy", patience=2)
    assert stopper.update(1, 0.50, model_with(1.0)) is False
    assert stopper.update(2, 0.70, model_with(2.0)) is False  # better: kept
    assert stopper.update(3, 0.70, model_with(3.0)) is False  # equal is not better
    assert stopper.update(4, 0.60, model_with(4.0)) is True  # two epochs without improvement
    assert (stopper.best_epoch, stopper.best_value) == (2, 0.70)
    assert stopper.best_state["weight"].item() == 2.0


def test_early_stopping_on_a_loss_wants_it_lower():
    stopper = EarlyStopping(monitor="val_loss", patience=5)
    stopper.update(1, 1.0, model_with(1.0))
    stopper.update(2, 0.4, model_with(2.0))
    stopper.update(3, 0.9, model_with(3.0))
    assert (stopper.best_epoch, stopper.best_value) == (2, 0.4)


def test_best_weights_are_a_copy_training_cannot_change():
    model = model_with(1.0)
    stopper = EarlyStopping(monitor="val_accuracy", patience=3)
    stopper.update(1, 0.9, model)
    with torch.no_grad():
        model.weight.fill_(7.0)  # training goes on in place
    assert stopper.best_state["weight"].item() == 1.0


def test_record_and_restore_carry_the_state_across_a_resume():
    first = EarlyStopping(monitor="val_accuracy", patience=2)
    first.update(1, 0.8, model_with(5.0))
    first.update(2, 0.6, model_with(6.0))
    resumed = EarlyStopping(monitor="val_accuracy", patience=2)
    resumed.restore(first.record())
    assert resumed.update(3, 0.7, model_with(7.0)) is True  # patience counts from epoch 1, as before the kill
    assert resumed.best_state["weight"].item() == 5.0
