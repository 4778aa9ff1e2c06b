"""Stage train: fine-tune `model.arch` from models/pretrained.pt on the prepared splits, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import nullcontext
from functools import partial

from imgcls.config import layout
from imgcls.data.transforms import preprocessing_spec
from imgcls.engine import distributed, runtime
from imgcls.engine.finetune import fine_tune, training_splits
from imgcls.engine.recipe import seed_everything
from imgcls.engine.resume import find_resume, resume_key
from imgcls.engine.state import TrainState, save_state
from imgcls.files import write_csv, write_json
from imgcls.model.checkpoints import load_checkpoint, save_checkpoint
from imgcls.model.networks import starting_model
from imgcls.provenance import runs, store
from stages.entry import StageContext, stage_main

log = logging.getLogger("train")
# images/s goes to MLflow only: the committed curves must reproduce exactly.
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def run(context: StageContext) -> dict:
    """One process, or the launcher of `train.distributed`'s processes (torchrun), or one of those ranks."""
    params, cfg = context.params, context.params.train.distributed
    if cfg.processes > 1 and not distributed.launched():
        store.connect(params.tracking.timeout)  # an unusable store fails here, before any rank starts
        distributed.run_under_torchrun(
            distributed.torchrun_command(
                "stages.train", cfg.nnodes, cfg.nproc_per_node, cfg.master_addr, cfg.master_port
            )
        )
        return {}
    world, device = distributed.init(cfg.backend, context.device, cfg.timeout)
    try:
        return train(context, world, device)
    finally:
        distributed.shutdown()


def train(context: StageContext, world: distributed.World, device) -> dict:
    """Fine-tune, keep the best epoch, write model + curves, and log it all to one MLflow run; a killed run
    resumes from models/checkpoint.pt into the same MLflow run. Rank 0 alone writes and logs."""
    params, cfg = context.params, context.params.train
    client = store.connect(params.tracking.timeout) if world.main else None  # before training: fail fast
    pretrained = load_checkpoint(layout.PRETRAINED, made_by="pretrain")
    seed_everything(cfg.seed)
    splits = training_splits(layout.PREPARED, cfg)
    classes = list(splits[0].classes)
    model = starting_model(
        params.model.arch, classes, pretrained["state_dict"], cfg.freeze, layout.PRETRAINED
    )
    key = resume_key(params) if world.main else {}
    resume = distributed.broadcast_object(find_resume(layout.CHECKPOINT, key) if world.main else None)
    run_id = open_run(context, client, resume, pretrained["provenance"], device) if world.main else None
    save = partial(save_state, layout.CHECKPOINT, meta={"key": key, "run_id": run_id})
    hooks = (save, partial(runs.log_row, client, run_id)) if world.main else (None, None)  # checkpoint, log
    memory = context.memory_format
    with (
        runs.run_status(client, run_id) if world.main else nullcontext(),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        model = model.to(device, memory_format=memory)
        history, stopper, trained = fine_tune(model, splits, params, device, memory, world, resume, *hooks)
        trained.load_state_dict(stopper.best_state)  # the head alone when it trained on cached features
        metrics = {
            "best_epoch": stopper.best_epoch,
            f"best_{cfg.monitor}": stopper.best_value,
            "epochs_run": len(history),
        }
        if world.main:
            client.set_tag(run_id, "nondeterministic_ops", json.dumps(runtime.nondeterministic_ops(caught)))
            runs.log_epoch_metrics(client, run_id, stopper.best_epoch, metrics)
            save_checkpoint(
                layout.MODEL,
                model,
                arch=params.model.arch,
                class_names=classes,
                preprocessing=preprocessing_spec(cfg.crop_size),
                params=params.as_dict(),
                provenance=pretrained["provenance"],
                best_epoch=stopper.best_epoch,
            )  # no run id: same bytes
            write_csv(
                layout.HISTORY,
                HISTORY_FIELDS,
                [{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in history],
            )
            write_json(layout.TRAIN_METRICS, metrics)
            runs.write_run_file(client, run_id)
    distributed.barrier()  # no rank leaves (and tears the group down) before rank 0 has written
    return metrics


def open_run(context: StageContext, client, resume: TrainState | None, weights: dict, device) -> str:
    """The MLflow run this training goes into: the killed run it resumes, or a new one; says where it is."""
    environment = context.write_fingerprint(device)
    run_id = (
        runs.resume_run(client, resume)
        if resume
        else runs.start_run(client, context.params, weights, environment).info.run_id
    )
    log.info("MLflow: %s", runs.links(client, run_id))
    return run_id


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
