"""Stage pretrain: the starting weights for `train`, from ImageNet, a file, a source dataset, or none."""

from __future__ import annotations

import logging
import time

from torch import nn

from imgcls.config import layout
from imgcls.data.datasets import image_folder
from imgcls.data.loaders import make_loader
from imgcls.data.transforms import train_transform
from imgcls.engine.loop import fit
from imgcls.engine.recipe import Recipe, seed_everything
from imgcls.files import sha256_file, write_json
from imgcls.model.checkpoints import save_checkpoint
from imgcls.model.networks import build_model
from imgcls.model.weights import load_file, load_imagenet
from stages.entry import StageContext, stage_main

log = logging.getLogger("pretrain")


def run(context: StageContext) -> dict:
    """Resolve or train the starting weights, save them with their provenance; returns metrics."""
    params, start = context.params, time.perf_counter()
    cfg, arch = params.pretrain, params.model.arch
    context.write_fingerprint()
    seed_everything(cfg.seed)
    metrics: dict = {}
    if cfg.source == "imagenet":
        model, provenance = load_imagenet(arch, cfg.download, cfg.sha256)
    elif cfg.source == "file":
        model, provenance = load_file(cfg.file, arch, cfg.sha256)
    elif cfg.source == "dataset":
        model, metrics, provenance = pretrain_on_dataset(context)
    else:
        model = build_model(arch, 1000)
        provenance = {"source": "none", "origin": f"random init, torch.manual_seed({cfg.seed})"}
    save_checkpoint(layout.PRETRAINED, model, arch=arch, provenance=provenance)
    write_json(layout.PRETRAIN_METRICS, metrics)  # no timings: committed metrics must reproduce exactly
    log.info(
        "starting weights from %s -> %s (sha256 %s) in %.1f s",
        provenance["origin"],
        layout.PRETRAINED,
        sha256_file(layout.PRETRAINED),
        time.perf_counter() - start,
    )
    return {**metrics, "provenance": provenance}


def pretrain_on_dataset(context: StageContext) -> tuple[nn.Module, dict, dict]:
    """Train `model.arch` from scratch on the source ImageFolder `pretrain.data` (the last epoch is kept)."""
    params, device, memory = context.params, context.device, context.memory_format
    cfg = params.pretrain
    dataset = image_folder(cfg.data, train_transform(cfg.crop_size, cfg.crop_scale_min, True))
    loader = make_loader(
        dataset, cfg.batch_size, shuffle=True, num_workers=params.runtime.num_workers, seed=cfg.seed
    )
    model = build_model(params.model.arch, len(dataset.classes)).to(device, memory_format=memory)
    recipe = Recipe(
        optimizer="adamw",
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=0.0,
        warmup_epochs=1,
        epochs=cfg.epochs,
        label_smoothing=0.0,
        monitor=None,
        patience=cfg.epochs,
        frozen_backbone=False,
    )
    history, _ = fit(model, loader, None, recipe, device, memory_format=memory)
    metrics = {
        "train_loss": history[-1]["train_loss"],
        "train_accuracy": history[-1]["train_accuracy"],
        "images": len(dataset),
        "classes": len(dataset.classes),
    }
    provenance = {
        "source": "dataset",
        "origin": f"pretrained from scratch on {cfg.data}",
        "classes": list(dataset.classes),
        "images": len(dataset),
        "epochs": cfg.epochs,
    }
    return model.cpu(), metrics, provenance


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
