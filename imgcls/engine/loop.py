"""The training loop: one `fit` for every stage that trains (epochs, steps, validation, early stopping,
checkpoints, resuming) and the epoch it repeats. Torch only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from imgcls.data.transforms import to_model_input
from imgcls.engine import distributed
from imgcls.engine.inference import autocast, validate
from imgcls.engine.recipe import EarlyStopping, Recipe, make_optimizer, make_scheduler
from imgcls.engine.state import TrainState, capture_rng, restore_rng
from imgcls.model.networks import set_train_mode

log = logging.getLogger(__name__)


def train_one_epoch(
    model,
    loader,
    loss_fn,
    optimizer,
    scheduler,
    device,
    frozen_backbone=False,
    epoch=0,
    log_every=20,
    memory_format=torch.contiguous_format,
    start_step: int = 0,
    sums: dict | None = None,
    on_step: Callable[[int, Callable[[], dict]], None] | None = None,
) -> dict:
    """One pass over `loader` (this rank's share); returns mean loss, accuracy and images/s over every rank.
    Sums stay on the device (no host sync per step on CUDA); a non-finite loss stops training naming the epoch
    and step where it first appeared. A resumed epoch starts after `start_step` batches with their `sums`;
    `on_step(step, sums)` runs after each step (the checkpoint's hook; `sums()` syncs with the device)."""
    set_train_mode(model, frozen_backbone)
    sums = sums or {"loss": 0.0, "correct": 0, "seen": 0}
    total_loss = torch.tensor(sums["loss"], dtype=torch.float64, device=device)
    correct = torch.tensor(sums["correct"], dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    seen, start, steps = sums["seen"], time.perf_counter(), start_step + len(loader)
    for batch, (images, targets) in enumerate(loader, start_step + 1):
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
        report = batch % log_every == 0 or batch == steps
        if report or device.type == "cpu":  # on the CPU the check costs nothing: stop at the bad step itself
            check_finite(first_bad, epoch)
        if report:
            log.info(
                "epoch %d batch %d/%d loss %.4f %.1f images/s",
                epoch,
                batch,
                steps,
                total_loss.item() / seen,
                (seen - sums["seen"]) / (time.perf_counter() - start),
            )
        if on_step:
            on_step(
                batch,
                lambda loss_sum=total_loss, hits=correct, count=seen: {
                    "loss": loss_sum.item(),
                    "correct": int(hits.item()),
                    "seen": count,
                },
            )
    elapsed = time.perf_counter() - start
    totals = distributed.sum_all(
        torch.stack(
            [total_loss, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)]
        )
    )
    loss_sum, correct_sum, seen_sum = totals.tolist()
    return {
        "loss": loss_sum / seen_sum,
        "accuracy": correct_sum / seen_sum,
        "images_per_s": (seen_sum - sums["seen"]) / elapsed,
    }


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingDiverged(
            f"training diverged: the loss is not finite at epoch {epoch}, step {step}. "
            "Lower the learning rate (train.lr / pretrain.lr), or check the starting weights"
        )


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    recipe: Recipe,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
    memory_format=torch.contiguous_format,
    compile_model: bool = False,
    resume: TrainState | None = None,
    checkpoint: Callable[[TrainState], None] | None = None,
    checkpoint_every: int = 0,
) -> tuple[list[dict], EarlyStopping | None]:
    """Train `model` (already on `device` in `memory_format`) up to `recipe.epochs`, validating each epoch
    when there is a `val_loader` and stopping early on no progress; returns the per-epoch history and the
    early-stopping record (None without validation).

    - `resume`: a saved `TrainState` to go on from, exactly where it stopped.
    - `checkpoint(state)`: called after every epoch, and every `checkpoint_every` steps when above 0, with the
      whole state (rank 0 passes it; other ranks pass None). The state is saved before `on_epoch` reports the
      epoch, so a kill between the two re-reports it on resume rather than losing it.
    - Under torchrun the model trains as DistributedDataParallel; `model` stays the unwrapped module, whose
      state is saved. The ranks' metrics are summed, and rank 0's early-stopping decision binds them all.
    - `compile_model`: steps run through torch.compile (the first epoch pays the compilation).
    """
    forward = distributed.wrap(model, device)
    forward = torch.compile(forward) if compile_model else forward
    optimizer = make_optimizer(model, recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    steps = len(train_loader)
    scheduler = make_scheduler(optimizer, recipe.warmup_epochs * steps, recipe.epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    stopper = EarlyStopping(recipe.monitor, recipe.patience) if val_loader is not None else None
    history: list[dict] = []
    first_epoch, first_step, sums = 1, 0, None
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        if stopper:
            stopper.restore(resume.stopper)
        history = [dict(row) for row in resume.history]
        first_epoch, first_step, sums = resume.epoch, resume.step, dict(resume.sums)
        restore_rng(resume.rng, train_loader.generator)
        log.info("resuming at epoch %d, step %d (%d epochs done)", first_epoch, first_step, len(history))

    def state(epoch: int, step: int, batch_sums: dict | None, finished: bool = False) -> TrainState:
        return TrainState(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            stopper=stopper.record() if stopper else {},
            history=[{k: v for k, v in row.items() if k != "images_per_s"} for row in history],
            epoch=epoch,
            step=step,
            sums=batch_sums or {"loss": 0.0, "correct": 0, "seen": 0},
            rng=capture_rng(getattr(train_loader, "generator", None)),
            finished=finished,
        )

    for epoch in range(first_epoch, recipe.epochs + 1):
        skip = first_step if epoch == first_epoch else 0
        if skip:  # a resumed epoch starts after the batches already done
            train_loader.sampler.set_epoch(epoch, skip * train_loader.batch_size)
        else:  # DistributedSampler's seam
            train_loader.sampler.set_epoch(epoch)
        lr = sums["lr"] if skip else optimizer.param_groups[0]["lr"]  # the rate the epoch started with
        on_step = None
        if checkpoint and checkpoint_every:

            def on_step(
                step: int, batch_sums: Callable[[], dict], epoch: int = epoch, lr: float = lr
            ) -> None:
                if step % checkpoint_every == 0 and step < steps:
                    checkpoint(state(epoch, step, batch_sums() | {"lr": lr}))
                    log.info("checkpoint: epoch %d step %d", epoch, step)

        trained = train_one_epoch(
            forward,
            train_loader,
            loss_fn,
            optimizer,
            scheduler,
            device,
            recipe.frozen_backbone,
            epoch,
            memory_format=memory_format,
            start_step=skip,
            sums=sums if skip else None,
            on_step=on_step,
        )
        row = {"epoch": epoch, "train_loss": trained["loss"], "train_accuracy": trained["accuracy"]}
        if val_loader is not None:
            validated = validate(forward, val_loader, loss_fn, device, memory_format)
            row |= {"val_loss": validated["loss"], "val_accuracy": validated["accuracy"]}
        row |= {"lr": lr, "images_per_s": trained["images_per_s"]}
        history.append(row)
        log.info("epoch %d: %s", epoch, " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        stop = distributed.agree(bool(stopper and stopper.update(epoch, row[recipe.monitor], model)), device)
        if checkpoint:
            checkpoint(state(epoch + 1, 0, None, finished=stop or epoch == recipe.epochs))
        if on_epoch:
            on_epoch(row)
        if stop:
            log.info(
                "early stop: no %s improvement for %d epochs (best epoch %d)",
                recipe.monitor,
                recipe.patience,
                stopper.best_epoch,
            )
            break
    return history, stopper
