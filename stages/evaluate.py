"""Stage evaluate: the trained model on the held-out test split. Scores with bootstrap intervals, per-class
gaps, the confusion matrix, calibration (ECE, reliability diagram, temperature fitted on val) and Grad-CAM
grids of the most frequent confusions; all of it as DVC metrics, reports and plots and in the model's MLflow
run."""

from __future__ import annotations

import logging

import torch

from imgcls.config import layout
from imgcls.data.datasets import model_split
from imgcls.data.loaders import make_loader
from imgcls.engine.inference import collect_logits
from imgcls.evaluation.metrics import assess, summary
from imgcls.evaluation.plots import write_confusion, write_reliability, write_saliency
from imgcls.files import write_json
from imgcls.model.checkpoints import load_checkpoint, model_from_checkpoint
from imgcls.provenance import run_outputs, runs, store
from stages.entry import StageContext, stage_main

log = logging.getLogger("evaluate")


def run(context: StageContext) -> dict:
    """Score models/model.pt on the test split; write metrics, reports and plots and add them to the model's
    run."""
    params, cfg, device, memory = (
        context.params,
        context.params.evaluate,
        context.device,
        context.memory_format,
    )
    client = store.connect(params.tracking.timeout)  # an unusable store fails here, before any work
    run_id = runs.reopen(client, layout.RUN, "evaluate").info.run_id
    checkpoint = load_checkpoint(layout.MODEL, made_by="train")
    test_set = model_split(layout.PREPARED, "test", checkpoint)
    environment = context.write_fingerprint()
    model = model_from_checkpoint(checkpoint).to(device, memory_format=memory)
    logits, targets = collect_logits(
        model, make_loader(test_set, cfg.batch_size, False, params.runtime.num_workers, 0), device, memory
    )
    val = val_logits(context, checkpoint, model)
    metrics, report, calibration = assess(logits, targets, val, checkpoint["class_names"], cfg)
    write_json(layout.EVALUATE_METRICS, metrics)  # headline figures: what `dvc exp show` compares
    write_json(layout.EVALUATE_REPORT, report)  # the detail behind them
    predicted = logits.argmax(1)
    write_confusion(layout.CONFUSION, test_set, targets, predicted, checkpoint["class_names"])
    figures = write_reliability(calibration)
    figures += write_saliency(params, checkpoint, model, test_set, device, memory, targets, logits)
    run_outputs.log_to_run(
        client,
        run_id,
        metrics,
        report,
        environment,
        targets.numpy(),
        predicted.numpy(),
        checkpoint["class_names"],
        figures,
    )
    for line in summary(metrics, report):
        log.warning(line[len("WARNING ") :]) if line.startswith("WARNING ") else log.info(line)
    return metrics | report


def val_logits(context: StageContext, checkpoint: dict, model) -> tuple[torch.Tensor, torch.Tensor]:
    """The val split's logits and targets, for fitting the temperature (empty when it is not fitted)."""
    params = context.params
    if not params.evaluate.temperature_scaling:
        return torch.empty(0, len(checkpoint["class_names"])), torch.empty(0, dtype=torch.long)
    try:
        val_set = model_split(layout.PREPARED, "val", checkpoint)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"evaluate.temperature_scaling is true but the val split cannot be read ({error}); "
            "raise prepare.val_fraction, or set evaluate.temperature_scaling: false"
        ) from None
    loader = make_loader(val_set, params.evaluate.batch_size, False, params.runtime.num_workers, 0)
    return collect_logits(model, loader, context.device, context.memory_format)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
