"""Stage train: fine-tune `model.arch` from models/pretrained.pt on the prepared splits, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from torch import nn

from stages import tracking
from stages.cli import stage_main
from stages.data import eval_transform, make_loader, preprocessing_spec, split_folder, train_transform
from stages.model import build_model, freeze_backbone, load_backbone, load_checkpoint, save_checkpoint
from stages.outputs import write_csv, write_json
from stages.params import Params
from stages.training import (
    EarlyStopping,
    configure_determinism,
    evaluate,
    make_optimizer,
    make_scheduler,
    nondeterministic_ops,
    resolve_device,
    seed_everything,
    train_one_epoch,
)

log = logging.getLogger("train")
# images/s goes to MLflow only: the committed curves must reproduce exactly.
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def run(params: Params) -> dict:
    """Fine-tune, keep the best epoch, write model + curves, and log it all to one MLflow run."""
    cfg = params.train
    client = tracking.connect()  # fails here, before training, if the store is unreachable
    pretrained = load_checkpoint(params.pretrain.out, made_by="pretrain")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    spec = preprocessing_spec(cfg.crop_size)
    prepared = Path(params.prepare.out)
    train_set = split_folder(prepared, "train", train_transform(cfg.crop_size, cfg.crop_scale_min, cfg.hflip))
    val_set = split_folder(prepared, "val", eval_transform(spec))
    if val_set.classes != train_set.classes:
        raise ValueError(f"{prepared}/val classes {val_set.classes} differ from train {train_set.classes}; "
                         "re-run `dvc repro prepare`")
    model = build_model(params.model.arch, len(train_set.classes))
    load_backbone(model, pretrained["state_dict"], params.pretrain.out)
    if cfg.freeze == "backbone":
        freeze_backbone(model)
    configure_determinism(device, cfg.deterministic)
    with start_run(client, params, pretrained["provenance"], device) as run_info, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history, stopper = fit(model.to(device), train_set, val_set, params, device, client, run_info.info.run_id)
        client.set_tag(run_info.info.run_id, "nondeterministic_ops", json.dumps(nondeterministic_ops(caught)))
        model.load_state_dict(stopper.best_state)
        metrics = {"best_epoch": stopper.best_epoch, f"best_{cfg.monitor}": stopper.best_value,
                   "epochs_run": len(history)}
        tracking.log_epoch_metrics(client, run_info.info.run_id, stopper.best_epoch, metrics)
        save_checkpoint(cfg.out, model, arch=params.model.arch, class_names=list(train_set.classes),
                        preprocessing=spec, params=params.as_dict(), provenance=pretrained["provenance"],
                        best_epoch=stopper.best_epoch)  # no run id here: same inputs, same bytes
        write_history(cfg.plots, history)
        write_json(cfg.metrics, metrics)
        write_json(cfg.run, {"run_id": run_info.info.run_id, "experiment_id": run_info.info.experiment_id,
                             "tracking_uri": tracking.tracking_uri()})
    return metrics


def fit(model, train_set, val_set, params: Params, device, client, run_id: str) -> tuple[list[dict], EarlyStopping]:
    """Train up to `train.epochs`, evaluating on val each epoch and stopping early on no progress."""
    cfg = params.train
    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.num_workers, cfg.seed)
    val_loader = make_loader(val_set, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = make_scheduler(optimizer, cfg.warmup_epochs * len(train_loader), cfg.epochs * len(train_loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    stopper, history = EarlyStopping(cfg.monitor, cfg.patience), []
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        trained = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, device,
                                  cfg.freeze == "backbone", epoch)
        validated = evaluate(model, val_loader, loss_fn, device)
        row = {"epoch": epoch, "train_loss": trained["loss"], "train_accuracy": trained["accuracy"],
               "val_loss": validated["loss"], "val_accuracy": validated["accuracy"], "lr": lr,
               "images_per_s": trained["images_per_s"]}
        history.append(row)
        tracking.log_epoch_metrics(client, run_id, epoch, {k: v for k, v in row.items() if k != "epoch"})
        log.info("epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f", epoch, row["train_loss"],
                 row["train_accuracy"], row["val_loss"], row["val_accuracy"])
        if stopper.update(epoch, row[cfg.monitor], model):
            log.info("early stop: no %s improvement for %d epochs (best epoch %d)", cfg.monitor, cfg.patience,
                     stopper.best_epoch)
            break
    return history, stopper


def start_run(client, params: Params, provenance: dict, device):
    """A new MLflow run for this model, tagged with everything that ties it to DVC and git."""
    import mlflow
    run = mlflow.start_run(experiment_id=tracking.experiment_id(client, params.train.experiment),
                           run_name=os.environ.get("DVC_EXP_NAME"))
    flat = tracking.flatten(params.as_dict())
    mlflow.log_params({k: "null" if v is None else v for k, v in flat.items()})
    lock = tracking.dvc_lock_hashes()
    tags = {**tracking.git_state(params.output_paths()), **tracking.environment(),
            "params_sha256": tracking.params_hash(params.as_dict()),
            "dvc.prepared_md5": lock.get("prepare", {}).get(params.prepare.out, ""),
            "dvc.data_md5": lock.get("prepare", {}).get(params.prepare.data, ""),
            "dvc.pretrained_md5": lock.get("pretrain", {}).get(params.pretrain.out, ""),
            "weights.source": provenance["source"], "weights.origin": provenance["origin"],
            "dvc.experiment": os.environ.get("DVC_EXP_NAME", ""), "device": str(device), "seed": params.train.seed}
    mlflow.set_tags({k: json.dumps(v) if isinstance(v, list | bool) else v for k, v in tags.items()})
    return run


def write_history(path: str, history: list[dict]) -> None:
    rows = [{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in history]
    write_csv(path, HISTORY_FIELDS, rows)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
