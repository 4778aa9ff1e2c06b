"""Stage train: fine-tune `model.arch` from models/pretrained.pt on the prepared splits, tracked in MLflow."""

from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from functools import partial

from imgcls.config import layout
from imgcls.config.params import Params
from imgcls.engine import launch
from imgcls.files import write_csv, write_json
from stages.entry import StageContext, stage_main

# images/s goes to MLflow only: the committed curves must reproduce exactly.
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def launches(params: Params) -> bool:
    """This process only starts torchrun's processes (it is none of them): it never imports torch."""
    return params.train.distributed.processes > 1 and not launch.launched()


def run(context: StageContext) -> dict:
    """One process, or the launcher of `train.distributed`'s processes (torchrun), or one of those ranks."""
    params, cfg = context.params, context.params.train.distributed
    if launches(params):
        from imgcls.provenance import store

        store.connect(params.tracking.timeout)  # an unusable store fails here, before any rank starts
        launch.run_under_torchrun(launch.torchrun_command("stages.train", cfg), cfg.max_restarts)
        return {}
    from imgcls.engine import distributed

    world, device = distributed.init(cfg.backend, context.device, cfg.timeout)
    try:
        return train(context, world, device)
    finally:
        distributed.shutdown()


def train(context: StageContext, world: launch.World, device) -> dict:
    """Fine-tune, keep the best epoch, write model + curves, and log it all to one MLflow run; a killed run
    resumes from models/checkpoint.pt into the same MLflow run. Rank 0 alone writes and logs."""
    from imgcls.data.transforms import preprocessing_spec  # here, not with the module: a launcher never
    from imgcls.engine import distributed, runtime  # loads torch, the model code or MLflow
    from imgcls.engine.finetune import fine_tune, training_splits
    from imgcls.engine.recipe import seed_everything
    from imgcls.engine.resume import find_resume, resume_key
    from imgcls.engine.state import StateWriter
    from imgcls.model.checkpoints import load_checkpoint, save_checkpoint
    from imgcls.model.networks import starting_model
    from imgcls.provenance import runs, store

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
    environment = context.write_fingerprint(device) if world.main else {}
    run_id = (
        runs.open_run(client, params, resume, pretrained["provenance"], environment) if world.main else None
    )
    # on a GPU the checkpoint is written behind the loop (imgcls.engine.state.StateWriter)
    writer = StateWriter(layout.CHECKPOINT, {"key": key, "run_id": run_id}, behind=device.type == "cuda")
    hooks = (writer.save, partial(runs.log_row, client, run_id)) if world.main else (None, None)  # ckpt, log
    memory = context.memory_format
    with (
        runs.run_status(client, run_id) if world.main else nullcontext(),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        model = model.to(device, memory_format=memory)
        try:
            history, stopper, trained = fine_tune(
                model, splits, params, device, memory, world, resume, *hooks
            )
        finally:
            writer.close()  # the last checkpoint is on disk before anything else is written
        trained.load_state_dict(stopper.best_state)  # the head alone when it trained on cached features
        metrics = {"best_epoch": stopper.best_epoch, f"best_{cfg.monitor}": stopper.best_value}
        metrics["epochs_run"] = len(history)
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


def main() -> None:
    stage_main(run, launches=launches)


if __name__ == "__main__":
    main()
