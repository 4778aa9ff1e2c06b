"""The train stage's use of the training loop: the splits it trains on, the recipe from `train`'s params, the
loaders (over cached backbone features, over images decoded into RAM, or over the files) and `fit`. Torch
only: what goes to MLflow is handed in as callbacks."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from imgcls.config.params import Params, TrainParams
from imgcls.data.datasets import DecodedImages, split_folder
from imgcls.data.loaders import make_loader
from imgcls.data.transforms import eval_crop, preprocessing_spec, train_transform
from imgcls.engine import distributed, launch
from imgcls.engine.features import FeatureViews, backbone_features, head_of
from imgcls.engine.loop import fit
from imgcls.engine.recipe import EarlyStopping, Recipe
from imgcls.engine.state import TrainState

log = logging.getLogger("train")


def training_splits(prepared: str | Path, cfg: TrainParams) -> tuple:
    """(train split with the training crop and flip, val split with the evaluation crop), checked file by file
    against the manifest and class by class against each other."""
    prepared = Path(prepared)
    train_set = split_folder(prepared, "train", train_transform(cfg.crop_size, cfg.crop_scale_min, cfg.hflip))
    val_set = split_folder(prepared, "val", eval_crop(preprocessing_spec(cfg.crop_size)))
    if val_set.classes != train_set.classes:
        raise ValueError(
            f"{prepared}/val classes {val_set.classes} differ from train {train_set.classes}; "
            "re-run `dvc repro prepare`"
        )
    return train_set, val_set


def recipe_of(cfg: TrainParams) -> Recipe:
    return Recipe(
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        warmup_epochs=cfg.warmup_epochs,
        epochs=cfg.epochs,
        label_smoothing=cfg.label_smoothing,
        monitor=cfg.monitor,
        patience=cfg.patience,
        frozen_backbone=cfg.freeze == "backbone",
    )


def fine_tune(
    model,
    splits: tuple,
    params: Params,
    device,
    memory,
    world: launch.World,
    resume: TrainState | None,
    checkpoint: Callable[[TrainState], None] | None = None,
    log_metrics: Callable[[dict], None] | None = None,
) -> tuple[list[dict], EarlyStopping, nn.Module]:
    """`fit` with `train`'s recipe on this rank's share of the data. Returns the history, the early-stopping
    record and the module it trained (the head alone on cached features). `log_metrics(row)` hears each
    epoch's row, and the feature pass's seconds as epoch 0; `checkpoint(state)` saves where training
    stands."""
    cfg, workers = params.train, params.runtime.num_workers
    train_set, val_set = splits
    if cfg.freeze == "backbone" and cfg.cache_features:
        start = time.perf_counter()
        model, train_loader, val_loader = cached_feature_loaders(
            model, train_set, val_set, params, device, memory, world
        )
        if log_metrics and resume is None:
            log_metrics({"epoch": 0, "feature_cache_s": time.perf_counter() - start})
        memory = torch.contiguous_format
    else:
        if cfg.cache_images:
            start = time.perf_counter()
            train_set, val_set = (DecodedImages(dataset, workers) for dataset in (train_set, val_set))
            log.info(
                "decoded %d images into RAM (%.0f MiB) in %.1f s",
                len(train_set) + len(val_set),
                (train_set.nbytes + val_set.nbytes) / 2**20,
                time.perf_counter() - start,
            )
        train_loader = make_loader(train_set, cfg.batch_size, True, workers, cfg.seed, world.rank, world.size)
        val_loader = make_loader(val_set, cfg.batch_size, False, workers, cfg.seed, world.rank, world.size)
    history, stopper = fit(
        model,
        train_loader,
        val_loader,
        recipe_of(cfg),
        device,
        on_epoch=log_metrics,
        memory_format=memory,
        compile_model=cfg.compile,
        resume=resume,
        checkpoint=checkpoint,
        checkpoint_every=cfg.checkpoint_every,
    )
    return history, stopper, model


def cached_feature_loaders(
    model, train_set, val_set, params: Params, device, memory, world: launch.World
) -> tuple[nn.Module, DataLoader, DataLoader]:
    """(the head, loaders over cached backbone features): the backbone runs once per image and view in all:
    each rank computes the features of its own contiguous share of the images and the ranks gather them, so
    every rank holds them all, in order; the head's loaders then take this rank's share of the batches."""
    cfg, workers = params.train, params.runtime.num_workers
    if cfg.crop_scale_min < 1.0:
        log.warning(
            "train.cache_features: random resized crops (crop_scale_min %s) are replaced by the center "
            "crop, since cached features have fixed views; set train.cache_features: false to keep them",
            cfg.crop_scale_min,
        )
    train_set = copy.copy(train_set)  # the caller's keeps its transform
    # views: the center crop, as is and mirrored
    train_set.transform = eval_crop(preprocessing_spec(cfg.crop_size))
    loaders = [
        make_loader(own_share(dataset, world, cfg.batch_size), cfg.batch_size, False, workers, cfg.seed)
        for dataset in (train_set, val_set)
    ]
    arch = params.model.arch
    train_views, train_targets = backbone_features(model, arch, loaders[0], device, cfg.hflip, memory)
    val_views, val_targets = backbone_features(model, arch, loaders[1], device, False, memory)
    train_views, val_views = (distributed.gather_rows(v, device, dim=1) for v in (train_views, val_views))
    train_targets, val_targets = (distributed.gather_rows(t, device) for t in (train_targets, val_targets))
    log.info(
        "cached backbone features: %d train images x %d views, %d val images",
        train_views.shape[1],
        train_views.shape[0],
        val_views.shape[1],
    )
    return (
        head_of(model, arch),
        make_loader(
            FeatureViews(train_views, train_targets),
            cfg.batch_size,
            True,
            0,
            cfg.seed,
            world.rank,
            world.size,
        ),
        make_loader(
            FeatureViews(val_views, val_targets), cfg.batch_size, False, 0, cfg.seed, world.rank, world.size
        ),
    )


def own_share(dataset, world: launch.World, batch_size: int):
    """This rank's contiguous share of `dataset`, in whole batches of `batch_size` (all of it in a world of
    one): the shares in rank order are the dataset in order, batched exactly as one process batches it, so the
    features each rank computes are the ones one process would (kernels may round a batch of another size
    differently)."""
    if world.size == 1:
        return dataset
    batches = -(-len(dataset) // batch_size)
    share = -(-batches // world.size) * batch_size
    return Subset(
        dataset, range(min(world.rank * share, len(dataset)), min((world.rank + 1) * share, len(dataset)))
    )
