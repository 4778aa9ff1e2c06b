"""Stage train: fine-tune `model.arch` from models/pretrained.pt on the prepared splits, tracked in MLflow."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pickle
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from stages import distributed, layout, mlflow_ui, provenance, runtime, tracking
from stages.cli import stage_main
from stages.data import DecodedImages, eval_crop, make_loader, preprocessing_spec, split_folder, train_transform
from stages.features import FeatureViews, backbone_features, head_of
from stages.imagefolder import sha256_file
from stages.model import build_model, freeze_backbone, load_backbone, load_checkpoint, save_checkpoint
from stages.outputs import write_csv, write_json
from stages.params import DOES_NOT_CHANGE_RESULTS, Params
from stages.repository import git_state
from stages.train_state import TrainState, load_state, save_state
from stages.training import EarlyStopping, Recipe, fit, seed_everything

log = logging.getLogger("train")
# images/s goes to MLflow only: the committed curves must reproduce exactly.
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def run(params: Params) -> dict:
    """One process, or the launcher of `train.distributed`'s processes (torchrun), or one of those ranks."""
    cfg = params.train.distributed
    if cfg.processes > 1 and not distributed.launched():
        tracking.connect(params.tracking.timeout)  # an unusable store fails here, before any rank starts
        distributed.run_under_torchrun(distributed.torchrun_command(
            "stages.train", cfg.nnodes, cfg.nproc_per_node, cfg.master_addr, cfg.master_port))
        return {}
    world, device = distributed.init(cfg.backend, runtime.resolve_device(params.train.device), cfg.timeout)
    try:
        return train(params, world, device)
    finally:
        distributed.shutdown()


def train(params: Params, world: distributed.World, device: torch.device) -> dict:
    """Fine-tune, keep the best epoch, write model + curves, and log it all to one MLflow run; a killed run
    resumes from `train.checkpoint` into the same MLflow run. Rank 0 alone writes and logs."""
    cfg = params.train
    client = tracking.connect(params.tracking.timeout) if world.main else None  # before training: fail fast
    pretrained = load_checkpoint(layout.PRETRAINED, made_by="pretrain")
    seed_everything(cfg.seed)
    spec = preprocessing_spec(cfg.crop_size)
    prepared = Path(layout.PREPARED)
    train_set = split_folder(prepared, "train", train_transform(cfg.crop_size, cfg.crop_scale_min, cfg.hflip))
    val_set = split_folder(prepared, "val", eval_crop(spec))
    if val_set.classes != train_set.classes:
        raise ValueError(f"{prepared}/val classes {val_set.classes} differ from train {train_set.classes}; "
                         "re-run `dvc repro prepare`")
    model = build_model(params.model.arch, len(train_set.classes))
    load_backbone(model, params.model.arch, pretrained["state_dict"], layout.PRETRAINED)
    if cfg.freeze == "backbone":
        freeze_backbone(model, params.model.arch)
    key = resume_key(params) if world.main else {}
    resume = distributed.broadcast_object(find_resume(layout.CHECKPOINT, key) if world.main else None)
    run_id = None
    if world.main:
        environment = runtime.write_fingerprint("train", device, params.runtime.reproducible)
        run_id = (continue_run(client, resume) if resume else
                  start_run(client, params, pretrained["provenance"], environment).info.run_id)
        experiment = client.get_run(run_id).info.experiment_id
        uri = tracking.tracking_uri()
        log.info("MLflow: this run %s; every run of %s, with their test figures, %s%s",
                 mlflow_ui.run_link(uri, experiment, run_id), params.train.experiment,
                 mlflow_ui.runs_link(uri, experiment), mlflow_ui.opened_by(uri))
    status = tracking.run_status(client, run_id) if world.main else nullcontext()
    with status, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        memory = runtime.memory_format(params.runtime.channels_last)

        def save(state: TrainState) -> None:
            state.meta = {"key": key, "run_id": run_id}
            save_state(layout.CHECKPOINT, state)
        history, stopper, trained = train_model(model.to(device, memory_format=memory), train_set, val_set,
                                                params, device, world, client, run_id, resume,
                                                save if world.main else None)
        trained.load_state_dict(stopper.best_state)  # the head alone when it trained on cached features
        metrics = {"best_epoch": stopper.best_epoch, f"best_{cfg.monitor}": stopper.best_value,
                   "epochs_run": len(history)}
        if world.main:
            client.set_tag(run_id, "nondeterministic_ops", json.dumps(runtime.nondeterministic_ops(caught)))
            tracking.log_epoch_metrics(client, run_id, stopper.best_epoch, metrics)
            save_checkpoint(layout.MODEL, model, arch=params.model.arch, class_names=list(train_set.classes),
                            preprocessing=spec, params=params.as_dict(), provenance=pretrained["provenance"],
                            best_epoch=stopper.best_epoch)  # no run id here: same inputs, same bytes
            write_history(layout.HISTORY, history)
            write_json(layout.TRAIN_METRICS, metrics)
            write_json(layout.RUN, {"run_id": run_id, "experiment_id": client.get_run(run_id).info.experiment_id,
                                 "tracking_uri": tracking.portable_uri(tracking.tracking_uri())})
    distributed.barrier()  # no rank leaves (and tears the group down) before rank 0 has written
    return metrics


def train_model(model, train_set, val_set, params: Params, device, world: distributed.World, client, run_id,
                resume: TrainState | None, checkpoint) -> tuple[list[dict], EarlyStopping, nn.Module]:
    """The shared `fit` with this stage's recipe, on this rank's share of the data; each epoch's row goes to
    MLflow as it ends (rank 0). Returns the history, the early-stopping record and the module it trained (the
    head alone on cached features)."""
    cfg, memory = params.train, runtime.memory_format(params.runtime.channels_last)
    if cfg.freeze == "backbone" and cfg.cache_features:
        start = time.perf_counter()
        model, train_loader, val_loader = cached_feature_loaders(model, train_set, val_set, params, device, world)
        if world.main and resume is None:
            tracking.log_epoch_metrics(client, run_id, 0, {"feature_cache_s": time.perf_counter() - start})
        memory = torch.contiguous_format
    else:
        if cfg.cache_images:
            start = time.perf_counter()
            train_set, val_set = (DecodedImages(dataset, cfg.num_workers) for dataset in (train_set, val_set))
            log.info("decoded %d images into RAM (%.0f MiB) in %.1f s", len(train_set) + len(val_set),
                     (train_set.nbytes + val_set.nbytes) / 2**20, time.perf_counter() - start)
        train_loader = make_loader(train_set, cfg.batch_size, True, cfg.num_workers, cfg.seed, world.rank, world.size)
        val_loader = make_loader(val_set, cfg.batch_size, False, cfg.num_workers, cfg.seed, world.rank, world.size)
    recipe = Recipe(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs, label_smoothing=cfg.label_smoothing,
                    monitor=cfg.monitor, patience=cfg.patience, frozen_backbone=cfg.freeze == "backbone")

    def log_epoch(row: dict) -> None:
        tracking.log_epoch_metrics(client, run_id, row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
    history, stopper = fit(model, train_loader, val_loader, recipe, device, on_epoch=log_epoch if world.main else None,
                           memory_format=memory, compile_model=cfg.compile, resume=resume, checkpoint=checkpoint,
                           checkpoint_every=cfg.checkpoint_every)
    return history, stopper, model


def cached_feature_loaders(model, train_set, val_set, params: Params, device, world: distributed.World
                           ) -> tuple[nn.Module, DataLoader, DataLoader]:
    """(the head, loaders over cached backbone features): the backbone runs once per image and view (on every
    rank, over every image: the head's loaders then take this rank's share)."""
    cfg, memory = params.train, runtime.memory_format(params.runtime.channels_last)
    if cfg.crop_scale_min < 1.0:
        log.warning("train.cache_features: random resized crops (crop_scale_min %s) are replaced by the center "
                    "crop, since cached features have fixed views; set train.cache_features: false to keep them",
                    cfg.crop_scale_min)
    train_set = copy.copy(train_set)  # the caller's keeps its transform
    train_set.transform = eval_crop(preprocessing_spec(cfg.crop_size))  # views: the center crop, as is and mirrored
    loaders = [make_loader(dataset, cfg.batch_size, False, cfg.num_workers, cfg.seed)
               for dataset in (train_set, val_set)]
    arch = params.model.arch
    train_views, train_targets = backbone_features(model, arch, loaders[0], device, cfg.hflip, memory)
    val_views, val_targets = backbone_features(model, arch, loaders[1], device, False, memory)
    log.info("cached backbone features: %d train images x %d views, %d val images", train_views.shape[1],
             train_views.shape[0], val_views.shape[1])
    return (head_of(model, arch),
            make_loader(FeatureViews(train_views, train_targets), cfg.batch_size, True, 0, cfg.seed, world.rank,
                        world.size),
            make_loader(FeatureViews(val_views, val_targets), cfg.batch_size, False, 0, cfg.seed, world.rank,
                        world.size))


def resume_key(params: Params) -> dict:
    """What a checkpoint must have been made from to be resumed: the params `train` reads, the prepared data
    (manifest.csv hashes every image), the starting weights and the code."""
    sections = {name: params.as_dict()[name] for name in ("model", "runtime", "train")}
    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.name.encode() + b"\0" + path.read_bytes())
    return {"params": {k: v for k, v in provenance.flatten(sections).items() if k not in DOES_NOT_CHANGE_RESULTS},
            "data": sha256_file(layout.MANIFEST), "weights": sha256_file(layout.PRETRAINED), "code": code.hexdigest()}


def find_resume(path: str, key: dict) -> TrainState | None:
    """The checkpoint at `path` when this run may go on from it; otherwise None, saying why."""
    if not Path(path).is_file():
        return None
    try:
        state = load_state(path)
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as error:
        log.warning("not resuming: %s cannot be read (%s); starting fresh", path, str(error).splitlines()[0][:200])
        return None
    if state.finished:
        log.info("%s holds a finished run; starting fresh", path)
        return None
    changed = resume_blockers(state.meta.get("key", {}), key)
    if changed:
        log.warning("not resuming from %s (epoch %d, step %d): %s; starting fresh", path, state.epoch, state.step,
                    "; ".join(changed))
        return None
    log.info("resuming from %s: epoch %d, step %d, MLflow run %s", path, state.epoch, state.step,
             state.meta["run_id"])
    return state


def resume_blockers(old: dict, new: dict) -> list[str]:
    """What differs between the checkpoint's inputs and this run's, in words."""
    reasons = []
    old_params, new_params = old.get("params", {}), new["params"]
    changed = sorted(k for k in set(old_params) | set(new_params) if old_params.get(k) != new_params.get(k))
    if changed:
        reasons.append("params changed: " + ", ".join(f"{k} {old_params.get(k)!r} -> {new_params.get(k)!r}"
                                                      for k in changed[:5]) + (" ..." if len(changed) > 5 else ""))
    for part, what in (("data", "the prepared data changed (manifest.csv)"),
                       ("weights", "the starting weights changed (pretrain.out)"),
                       ("code", "the code changed (stages/*.py)")):
        if old.get(part) != new[part]:
            reasons.append(what)
    return reasons


def continue_run(client, resume: TrainState) -> str:
    """The MLflow run a resumed checkpoint belongs to, RUNNING again under this process, with any epoch the
    kill kept from it logged now (none twice)."""
    run_id = resume.meta["run_id"]
    tracking.continue_run(client, run_id, f"resumed at epoch {resume.epoch}, step {resume.step}")
    logged = {metric.step for metric in client.get_metric_history(run_id, "train_loss")}
    for row in resume.history:
        if row["epoch"] not in logged:
            tracking.log_epoch_metrics(client, run_id, row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
    return run_id


def start_run(client, params: Params, weights: dict, environment: dict):
    """A new MLflow run for this model, tagged with everything that ties it to DVC and git (and with this
    process, so a run a SIGKILL leaves RUNNING can be recognised later)."""
    from mlflow.entities import Param
    experiment = tracking.experiment_id(client, params.train.experiment)
    tracking.mark_orphaned_runs(client, experiment, "train")
    params_sha = provenance.params_hash(params.as_dict())
    lock = provenance.dvc_lock_hashes()
    tags = {**git_state(layout.all_outputs()), **provenance.environment(), **tracking.process_tags(),
            **{f"env.{k}": "" if v is None else v for k, v in environment.items()},
            "params_sha256": params_sha,
            "dvc.prepared_md5": lock.get("prepare", {}).get(layout.PREPARED, ""),
            "dvc.data_md5": lock.get("prepare", {}).get(params.prepare.data, ""),
            "dvc.pretrained_md5": lock.get("pretrain", {}).get(layout.PRETRAINED, ""),
            "weights.source": weights["source"], "weights.origin": weights["origin"],
            "dvc.experiment": os.environ.get("DVC_EXP_NAME", ""), "seed": params.train.seed}
    run = client.create_run(experiment, run_name=tracking.run_name(params_sha),
                            tags={k: json.dumps(v) if isinstance(v, list | bool) else str(v) for k, v in tags.items()})
    flat = provenance.flatten(params.as_dict())
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
