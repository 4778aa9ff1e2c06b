"""Stage evaluate: the trained model on the held-out test split; metrics, confusion matrix, MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from stages import runtime, tracking
from stages.cli import stage_main
from stages.data import eval_crop, make_loader, split_folder
from stages.metrics import bootstrap_intervals, score
from stages.model import load_checkpoint, model_from_checkpoint
from stages.outputs import write_csv, write_json
from stages.params import Params
from stages.training import predict

log = logging.getLogger("evaluate")


def run(params: Params) -> dict:
    """Score models/model.pt on the test split; write metrics/plots and add them to the model's run."""
    checkpoint = load_checkpoint(params.train.out, made_by="train")
    class_names = checkpoint["class_names"]
    test_set = split_folder(params.prepare.out, "test", eval_crop(checkpoint["preprocessing"]))
    if test_set.classes != class_names:
        raise ValueError(f"test split classes {test_set.classes} differ from the model's {class_names}; "
                         "re-run `dvc repro`")
    cfg, device = params.evaluate, runtime.resolve_device(params.train.device)
    environment = runtime.write_fingerprint(params.runtime.fingerprints, "evaluate", device,
                                            params.runtime.reproducible)
    loader = make_loader(test_set, cfg.batch_size, False, params.train.num_workers, 0)
    layout = runtime.memory_format(params.runtime.channels_last)
    model = model_from_checkpoint(checkpoint).to(device, memory_format=layout)
    logits, targets = predict(model, loader, device, layout)
    predicted = logits.argmax(1)
    metrics = score(targets.numpy(), predicted.numpy(), class_names)
    metrics["test_loss"] = nn.functional.cross_entropy(logits, targets).item()
    metrics |= bootstrap_intervals(targets.numpy(), predicted.numpy(), len(class_names), cfg.bootstrap, cfg.seed)
    write_json(cfg.metrics, metrics)
    write_confusion(cfg.plots, test_set, targets, predicted, class_names)
    log_to_run(params, metrics, environment, targets.numpy(), predicted.numpy(), class_names)
    log.info("test accuracy %.4f (95%% CI %.4f-%.4f), macro F1 %.4f (%.4f-%.4f) on %d images",
             metrics["test_accuracy"], *metrics["test_accuracy_ci95"].values(), metrics["test_f1_macro"],
             *metrics["test_f1_macro_ci95"].values(), len(test_set))
    return metrics


def write_confusion(path: str, dataset, targets: torch.Tensor, predicted: torch.Tensor, names: list[str]) -> None:
    """One row per test image (DVC's confusion template counts them)."""
    root = Path(dataset.root)
    write_csv(path, ["file", "actual", "predicted"],
              [{"file": Path(file).relative_to(root).as_posix(), "actual": names[actual], "predicted": names[guess]}
               for (file, _), actual, guess in zip(dataset.samples, targets.tolist(), predicted.tolist())])


def log_to_run(params: Params, metrics: dict, environment: dict, targets, predicted, class_names: list[str]) -> None:
    """Add test metrics, the per-class report and the confusion-matrix PNG to the train stage's run, without
    changing its status."""
    import matplotlib
    matplotlib.use("Agg")
    from sklearn.metrics import ConfusionMatrixDisplay

    client = tracking.connect(params.tracking.timeout)
    run_id = tracking.reopen(client, params.train.run, "evaluate").info.run_id
    values = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    values |= {f"{k}_{bound}": v[bound] for k, v in metrics.items() if k.endswith("_ci95") for bound in ("low", "high")}
    tracking.log_epoch_metrics(client, run_id, 0, values)
    for key, value in environment.items():
        client.set_tag(run_id, f"env.evaluate.{key}", "" if value is None else str(value))
    client.log_dict(run_id, metrics, "evaluate/metrics.json")
    matrix = confusion_matrix(targets, predicted, labels=list(range(len(class_names))))
    display = ConfusionMatrixDisplay(matrix, display_labels=class_names)
    display.plot(xticks_rotation=45, colorbar=False)
    display.figure_.tight_layout()
    client.log_figure(run_id, display.figure_, "evaluate/confusion_matrix.png")
    matplotlib.pyplot.close(display.figure_)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
