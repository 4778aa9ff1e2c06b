"""Stage evaluate: the trained model on the held-out test split. Scores with bootstrap intervals, per-class
gaps, the confusion matrix, calibration (ECE, reliability diagram, temperature fitted on val) and Grad-CAM grids
of the most frequent confusions; all of it as DVC metrics and plots and in the model's MLflow run."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from stages import layout, mlflow_ui, runtime, tracking
from stages.calibration import calibrate, reliability_figure
from stages.cli import stage_main
from stages.data import eval_crop, make_loader, split_folder, to_model_input
from stages.metrics import bootstrap_intervals, gaps, score
from stages.model import load_checkpoint, model_from_checkpoint
from stages.outputs import replace_folder, write_csv, write_figure, write_json
from stages.params import Params
from stages.saliency import write_grids
from stages.training import predict

log = logging.getLogger("evaluate")


def run(params: Params) -> dict:
    """Score models/model.pt on the test split; write metrics/plots and add them to the model's run."""
    client = tracking.connect(params.tracking.timeout)  # an unusable store fails here, before any work
    run_id = tracking.reopen(client, layout.RUN, "evaluate").info.run_id
    checkpoint = load_checkpoint(layout.MODEL, made_by="train")
    class_names = checkpoint["class_names"]
    test_set = split_folder(layout.PREPARED, "test", eval_crop(checkpoint["preprocessing"]))
    if test_set.classes != class_names:
        raise ValueError(f"test split classes {test_set.classes} differ from the model's {class_names}; "
                         "re-run `dvc repro`")
    cfg, device = params.evaluate, runtime.resolve_device(params.train.device)
    environment = runtime.write_fingerprint("evaluate", device, params.runtime.reproducible)
    loader = make_loader(test_set, cfg.batch_size, False, params.train.num_workers, 0)
    memory = runtime.memory_format(params.runtime.channels_last)
    model = model_from_checkpoint(checkpoint).to(device, memory_format=memory)
    logits, targets = predict(model, loader, device, memory)
    predicted = logits.argmax(1)
    metrics = score(targets.numpy(), predicted.numpy(), class_names)
    metrics["test_loss"] = nn.functional.cross_entropy(logits, targets).item()
    metrics |= bootstrap_intervals(targets.numpy(), predicted.numpy(), len(class_names), cfg.bootstrap, cfg.seed)
    calibration = calibrate(*val_logits(params, checkpoint, model, device, memory), logits, targets,
                            cfg.temperature_scaling)
    metrics |= {k: v for k, v in calibration.items() if k not in ("bins", "temperature_fallback")}
    report = {"per_class": metrics.pop("per_class"), **gaps(targets.numpy(), predicted.numpy(), class_names, cfg.gaps),
              "calibration": {"temperature_fallback": calibration["temperature_fallback"]}}
    write_json(layout.EVALUATE_METRICS, metrics)  # headline figures: what `dvc exp show` compares
    write_json(layout.EVALUATE_REPORT, report)  # the detail behind them
    write_confusion(layout.CONFUSION, test_set, targets, predicted, class_names)
    figures = write_reliability(calibration)
    figures += write_saliency(params, checkpoint, model, test_set, device, memory, targets, logits)
    log_to_run(client, run_id, metrics, report, environment, targets.numpy(), predicted.numpy(), class_names,
               figures)
    log.info("test accuracy %.4f (95%% CI %.4f-%.4f), macro F1 %.4f (%.4f-%.4f) on %d images",
             metrics["test_accuracy"], *metrics["test_accuracy_ci95"].values(), metrics["test_f1_macro"],
             *metrics["test_f1_macro_ci95"].values(), len(test_set))
    log.info("calibration: T %.4f (fitted on val: %.4f); test ECE %.4f -> %.4f, NLL %.4f -> %.4f",
             metrics["temperature"], metrics["temperature_fitted"], metrics["test_ece"],
             metrics["test_ece_calibrated"], metrics["test_nll"], metrics["test_nll_calibrated"])
    if metrics["test_ece_calibrated"] > metrics["test_ece"]:
        log.warning("temperature scaling raised the test ECE (%.4f -> %.4f): T fitted on %d val images does not carry "
                    "over to the test split; more val images would help (prepare.val_fraction), or turn it off "
                    "(evaluate.temperature_scaling: false)", metrics["test_ece"], metrics["test_ece_calibrated"],
                    metrics["val_images"])
    if calibration["temperature_fallback"]:
        log.warning("temperature scaling not used (T = 1 is exported): %s", calibration["temperature_fallback"])
    return metrics | report


def val_logits(params: Params, checkpoint: dict, model, device, memory) -> tuple[torch.Tensor, torch.Tensor]:
    """The val split's logits and targets, for fitting the temperature (empty when it is not fitted)."""
    if not params.evaluate.temperature_scaling:
        return torch.empty(0, len(checkpoint["class_names"])), torch.empty(0, dtype=torch.long)
    try:
        val_set = split_folder(layout.PREPARED, "val", eval_crop(checkpoint["preprocessing"]))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"evaluate.temperature_scaling is true but the val split cannot be read ({error}); "
                                "raise prepare.val_fraction, or set evaluate.temperature_scaling: false") from None
    if val_set.classes != checkpoint["class_names"]:
        raise ValueError(f"val split classes {val_set.classes} differ from the model's {checkpoint['class_names']}; "
                         "re-run `dvc repro`")
    loader = make_loader(val_set, params.evaluate.batch_size, False, params.train.num_workers, 0)
    return predict(model, loader, device, memory)


def write_reliability(calibration: dict) -> list[Path]:
    """One CSV per curve (a DVC plot draws them together) and the diagram as a PNG, in plots/reliability."""
    with replace_folder(layout.RELIABILITY) as folder:
        for name, rows in calibration["bins"].items():
            write_csv(folder / f"{name}.csv", ["confidence", "accuracy", "images", "low", "high"],
                      [{k: row[k] for k in ("confidence", "accuracy", "images", "low", "high")}
                       for row in rows if row["images"]])
        write_figure(folder / "reliability.png", reliability_figure(calibration))
    return [Path(layout.RELIABILITY) / "reliability.png"]


def write_saliency(params: Params, checkpoint: dict, model, test_set, device, memory, targets, logits) -> list[Path]:
    """Grad-CAM grids of the most frequent confusions, in plots/saliency, replaced whole (no stale pair survives)."""
    cfg = params.evaluate

    def load(indices: list[int]) -> torch.Tensor:
        return to_model_input(torch.stack([test_set[i][0] for i in indices]), device, memory)

    with replace_folder(layout.SALIENCY) as folder:
        grids = write_grids(model, checkpoint["arch"], load, targets, logits, checkpoint["class_names"],
                            checkpoint["preprocessing"], folder, cfg.saliency_pairs, cfg.saliency_wrong,
                            cfg.saliency_right)
    log.info("Grad-CAM grids of the %d most frequent confusions in %s", len(grids), layout.SALIENCY)
    return [Path(layout.SALIENCY) / grid.name for grid in grids]


def write_confusion(path: str, dataset, targets: torch.Tensor, predicted: torch.Tensor, names: list[str]) -> None:
    """One row per test image (DVC's confusion template counts them)."""
    root = Path(dataset.root)
    write_csv(path, ["file", "actual", "predicted"],
              [{"file": Path(file).relative_to(root).as_posix(), "actual": names[actual], "predicted": names[guess]}
               for (file, _), actual, guess in zip(dataset.samples, targets.tolist(), predicted.tolist())])


def log_to_run(client, run_id: str, metrics: dict, report: dict, environment: dict, targets, predicted,
               class_names: list[str], figures: list[Path]) -> None:
    """Add test metrics, the per-class report and gaps, the confusion matrix, the reliability diagram and the
    Grad-CAM grids to the train stage's run, without changing its status. The pictures are files at the run's
    artifact root under names every run shares (confusion_matrix.png, reliability.png, saliency_01.png...: the
    UI's Compare view shows the root files common to the runs), and keyed images under the same names, which
    the chart view shows side by side."""
    import matplotlib
    matplotlib.use("Agg")
    from PIL import Image
    from sklearn.metrics import ConfusionMatrixDisplay

    values = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    values |= {f"{k}_{bound}": v[bound] for k, v in metrics.items() if k.endswith("_ci95") for bound in ("low", "high")}
    tracking.log_epoch_metrics(client, run_id, 0, values)
    tags = {f"env.evaluate.{key}": value for key, value in environment.items()}
    tags["temperature_fallback"] = report["calibration"]["temperature_fallback"]
    for key, value in tags.items():
        client.set_tag(run_id, key, "" if value is None else str(value))
    client.log_dict(run_id, metrics, "evaluate/metrics.json")
    client.log_dict(run_id, report, "evaluate/report.json")
    matrix = confusion_matrix(targets, predicted, labels=list(range(len(class_names))))
    display = ConfusionMatrixDisplay(matrix, display_labels=class_names)
    display.plot(xticks_rotation=45, colorbar=False)
    display.figure_.tight_layout()
    client.log_figure(run_id, display.figure_, "confusion_matrix.png")
    pictures = {"confusion_matrix": display.figure_} | {mlflow_ui.picture_name(path)[:-4]: path for path in figures}
    with tempfile.TemporaryDirectory() as scratch:
        for path in figures:
            shutil.copy(path, Path(scratch) / mlflow_ui.picture_name(path))
            client.log_artifact(run_id, str(Path(scratch) / mlflow_ui.picture_name(path)))
    for key, picture in pictures.items():
        if isinstance(picture, Path):
            with Image.open(picture) as image:
                client.log_image(run_id, image.convert("RGB"), key=key, step=0)
        else:
            picture.canvas.draw()
            client.log_image(run_id, Image.frombuffer("RGBA", picture.canvas.get_width_height(),
                                                      picture.canvas.buffer_rgba()).convert("RGB"), key=key, step=0)
    matplotlib.pyplot.close(display.figure_)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
