"""Stage pretrain: the starting weights for `train`, from ImageNet, a file, a source dataset, or none."""

from __future__ import annotations

import logging
import time

from torch import nn

from stages.cli import stage_main
from stages.data import image_folder, make_loader, train_transform
from stages.imagefolder import sha256_file
from stages.model import build_model, save_checkpoint
from stages.outputs import write_json
from stages.params import Params
from stages.training import make_optimizer, make_scheduler, resolve_device, seed_everything, train_one_epoch
from stages.weights import load_file, load_imagenet

log = logging.getLogger("pretrain")


def run(params: Params) -> dict:
    """Resolve or train the starting weights, save them with their provenance; returns metrics."""
    cfg, arch, start = params.pretrain, params.model.arch, time.perf_counter()
    seed_everything(cfg.seed)
    metrics: dict = {}
    if cfg.source == "imagenet":
        state_dict, provenance = load_imagenet(arch, cfg.download)
        model = build_model(arch, state_dict["fc.weight"].shape[0])
        model.load_state_dict(state_dict)
    elif cfg.source == "file":
        state_dict, provenance = load_file(cfg.file)
        model = build_model(arch, state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else 1000)
        model.load_state_dict(state_dict)
    elif cfg.source == "dataset":
        model, metrics, provenance = pretrain_on_dataset(params)
    else:
        model = build_model(arch, 1000)
        provenance = {"source": "none", "origin": f"random init, torch.manual_seed({cfg.seed})"}
    save_checkpoint(cfg.out, model, arch=arch, provenance=provenance)
    write_json(cfg.metrics, metrics)  # no timings: committed metrics must reproduce exactly
    log.info("starting weights from %s -> %s (sha256 %s) in %.1f s", provenance["origin"], cfg.out,
             sha256_file(cfg.out), time.perf_counter() - start)
    return {**metrics, "provenance": provenance}


def pretrain_on_dataset(params: Params) -> tuple[nn.Module, dict, dict]:
    """Train `model.arch` from scratch on the source ImageFolder `pretrain.data`."""
    cfg = params.pretrain
    device = resolve_device(params.train.device)
    dataset = image_folder(cfg.data, train_transform(cfg.image_size, params.train.crop_scale_min, True))
    loader = make_loader(dataset, cfg.batch_size, shuffle=True, num_workers=params.train.num_workers,
                         seed=cfg.seed)
    model = build_model(params.model.arch, len(dataset.classes)).to(device)
    optimizer = make_optimizer(model, "adamw", cfg.lr, cfg.weight_decay, 0.0)
    scheduler = make_scheduler(optimizer, len(loader), cfg.epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, cfg.epochs + 1):
        result = train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, epoch=epoch)
        log.info("pretrain epoch %d: loss %.4f accuracy %.3f", epoch, result["loss"], result["accuracy"])
    metrics = {"train_loss": result["loss"], "train_accuracy": result["accuracy"],
               "images": len(dataset), "classes": len(dataset.classes)}
    provenance = {"source": "dataset", "origin": f"pretrained from scratch on {cfg.data}",
                  "classes": list(dataset.classes), "images": len(dataset), "epochs": cfg.epochs}
    return model.cpu(), metrics, provenance


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
