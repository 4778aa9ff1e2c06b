"""Stage train: fine-tune `model.arch` from models/pretrained.pt on the prepared splits, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from stages import runtime, tracking
from stages.cli import stage_main
from stages.data import eval_transform, make_loader, preprocessing_spec, split_folder, train_transform
from stages.model import build_model, freeze_backbone, load_backbone, load_checkpoint, save_checkpoint
from stages.outputs import write_csv, write_json
from stages.params import Params
from stages.repository import git_state
from stages.training import EarlyStopping, Recipe, fit, seed_everything

log = logging.getLogger("train")
# images/s goes to MLflow only: the committed curves must reproduce exactly.
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def run(params: Params) -> dict:
    """Fine-tune, keep the best epoch, write model + curves, and log it all to one MLflow run."""
    cfg = params.train
    client = tracking.connect(params.tracking.timeout)  # fails here, before training, if the store is unusable
    pretrained = load_checkpoint(params.pretrain.out, made_by="pretrain")
    seed_everything(cfg.seed)
    device = runtime.resolve_device(cfg.device)
    environment = runtime.write_fingerprint(params.runtime.fingerprints, "train", device,
                                            params.runtime.reproducible)
    spec = preprocessing_spec(cfg.crop_size)
    prepared = Path(params.prepare.out)
    train_set = split_folder(prepared, "train", train_transform(cfg.crop_size, cfg.crop_scale_min, cfg.hflip))
    val_set = split_folder(prepared, "val", eval_transform(spec))
    if val_set.classes != train_set.classes:
        raise ValueError(f"{prepared}/val classes {val_set.classes} differ from train {train_set.classes}; "
                         "re-run `dvc repro prepare`")
    model = build_model(params.model.arch, len(train_set.classes))
    load_backbone(model, params.model.arch, pretrained["state_dict"], params.pretrain.out)
    if cfg.freeze == "backbone":
        freeze_backbone(model, params.model.arch)
    run = start_run(client, params, pretrained["provenance"], environment)
    with tracking.run_status(client, run.info.run_id), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layout = runtime.memory_format(params.runtime.channels_last)
        history, stopper = train_model(model.to(device, memory_format=layout), train_set, val_set, params,
                                       device, client, run.info.run_id)
        client.set_tag(run.info.run_id, "nondeterministic_ops", json.dumps(runtime.nondeterministic_ops(caught)))
        model.load_state_dict(stopper.best_state)
        metrics = {"best_epoch": stopper.best_epoch, f"best_{cfg.monitor}": stopper.best_value,
                   "epochs_run": len(history)}
        tracking.log_epoch_metrics(client, run.info.run_id, stopper.best_epoch, metrics)
        save_checkpoint(cfg.out, model, arch=params.model.arch, class_names=list(train_set.classes),
                        preprocessing=spec, params=params.as_dict(), provenance=pretrained["provenance"],
                        best_epoch=stopper.best_epoch)  # no run id here: same inputs, same bytes
        write_history(cfg.plots, history)
        write_json(cfg.metrics, metrics)
        write_json(cfg.run, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                             "tracking_uri": tracking.portable_uri(tracking.tracking_uri())})
    return metrics


def train_model(model, train_set, val_set, params: Params, device, client, run_id: str
                ) -> tuple[list[dict], EarlyStopping]:
    """The shared `fit` with this stage's recipe; each epoch's row goes to MLflow as it ends."""
    cfg = params.train
    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.num_workers, cfg.seed)
    val_loader = make_loader(val_set, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    recipe = Recipe(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs, label_smoothing=cfg.label_smoothing,
                    monitor=cfg.monitor, patience=cfg.patience, frozen_backbone=cfg.freeze == "backbone")

    def log_epoch(row: dict) -> None:
        tracking.log_epoch_metrics(client, run_id, row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
    return fit(model, train_loader, val_loader, recipe, device, on_epoch=log_epoch,
               memory_format=runtime.memory_format(params.runtime.channels_last))


def start_run(client, params: Params, provenance: dict, environment: dict):
    """A new MLflow run for this model, tagged with everything that ties it to DVC and git (and with this
    process, so a run a SIGKILL leaves RUNNING can be recognised later)."""
    from mlflow.entities import Param
    experiment = tracking.experiment_id(client, params.train.experiment)
    tracking.mark_orphaned_runs(client, experiment, "train")
    params_sha = tracking.params_hash(params.as_dict())
    lock = tracking.dvc_lock_hashes()
    tags = {**git_state(params.output_paths()), **tracking.environment(), **tracking.process_tags(),
            **{f"env.{k}": "" if v is None else v for k, v in environment.items()},
            "params_sha256": params_sha,
            "dvc.prepared_md5": lock.get("prepare", {}).get(params.prepare.out, ""),
            "dvc.data_md5": lock.get("prepare", {}).get(params.prepare.data, ""),
            "dvc.pretrained_md5": lock.get("pretrain", {}).get(params.pretrain.out, ""),
            "weights.source": provenance["source"], "weights.origin": provenance["origin"],
            "dvc.experiment": os.environ.get("DVC_EXP_NAME", ""), "seed": params.train.seed}
    run = client.create_run(experiment, run_name=tracking.run_name(params_sha),
                            tags={k: json.dumps(v) if isinstance(v, list | bool) else str(v) for k, v in tags.items()})
    flat = tracking.flatten(params.as_dict())
    logged = [Param(k, "null" if v is None else str(v)) for k, v in flat.items()]
    for start in range(0, len(logged), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=logged[start:start + 100])
    return run


def write_history(path: str, history: list[dict]) -> None:
    rows = [{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in history]
    write_csv(path, HISTORY_FIELDS, rows)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
