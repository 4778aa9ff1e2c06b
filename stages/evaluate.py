"""Stage evaluate: the trained model on the held-out test split; metrics, confusion matrix, MLflow."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from torch import nn

from stages import tracking
from stages.cli import stage_main
from stages.data import eval_transform, make_loader, split_folder
from stages.model import load_checkpoint, model_from_checkpoint
from stages.outputs import write_json
from stages.params import Params
from stages.training import predict, resolve_device

log = logging.getLogger("evaluate")


def run(params: Params) -> dict:
    """Score models/model.pt on the test split; write metrics/plots and add them to the model's run."""
    checkpoint = load_checkpoint(params.train.out, made_by="train")
    class_names = checkpoint["class_names"]
    test_set = split_folder(params.prepare.out, "test", eval_transform(checkpoint["preprocessing"]))
    if test_set.classes != class_names:
        raise ValueError(f"test split classes {test_set.classes} differ from the model's {class_names}; "
                         "re-run `dvc repro`")
    device = resolve_device(params.train.device)
    loader = make_loader(test_set, params.evaluate.batch_size, False, params.train.num_workers, 0)
    logits, targets = predict(model_from_checkpoint(checkpoint).to(device), loader, device)
    predicted = logits.argmax(1)
    metrics = score(targets.numpy(), predicted.numpy(), class_names)
    metrics["test_loss"] = nn.functional.cross_entropy(logits, targets).item()
    write_json(params.evaluate.metrics, metrics)
    write_confusion(params.evaluate.plots, test_set, targets, predicted, class_names)
    log_to_run(params, metrics, targets.numpy(), predicted.numpy(), class_names)
    log.info("test accuracy %.4f, macro F1 %.4f on %d images", metrics["test_accuracy"],
             metrics["test_f1_macro"], len(test_set))
    return metrics


def score(targets, predicted, class_names: list[str]) -> dict:
    labels = list(range(len(class_names)))
    report = classification_report(targets, predicted, labels=labels, target_names=class_names,
                                   output_dict=True, zero_division=0)
    return {"test_accuracy": accuracy_score(targets, predicted),
            "test_f1_macro": f1_score(targets, predicted, labels=labels, average="macro", zero_division=0),
            "test_f1_weighted": f1_score(targets, predicted, labels=labels, average="weighted", zero_division=0),
            "test_images": int(len(targets)),
            "per_class": {name: {k: report[name][k] for k in ("precision", "recall", "f1-score", "support")}
                          for name in class_names}}


def write_confusion(path: str, dataset, targets: torch.Tensor, predicted: torch.Tensor, names: list[str]) -> None:
    """One row per test image (DVC's confusion template counts them)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    root = Path(dataset.root)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "actual", "predicted"])
        for (file, _), actual, guess in zip(dataset.samples, targets.tolist(), predicted.tolist()):
            writer.writerow([Path(file).relative_to(root).as_posix(), names[actual], names[guess]])


def log_to_run(params: Params, metrics: dict, targets, predicted, class_names: list[str]) -> None:
    """Add test metrics, the per-class report and the confusion-matrix PNG to the train stage's run."""
    import matplotlib
    matplotlib.use("Agg")
    import mlflow
    from sklearn.metrics import ConfusionMatrixDisplay

    tracking.connect()
    run_id = json.loads(Path(params.train.run).read_text())["run_id"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.log_dict(metrics, "evaluate/metrics.json")
        matrix = confusion_matrix(targets, predicted, labels=list(range(len(class_names))))
        display = ConfusionMatrixDisplay(matrix, display_labels=class_names)
        display.plot(xticks_rotation=45, colorbar=False)
        display.figure_.tight_layout()
        mlflow.log_figure(display.figure_, "evaluate/confusion_matrix.png")
        matplotlib.pyplot.close(display.figure_)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
