"""The evaluate stage's plots, each written whole: one row per test image for DVC's confusion template, the
reliability curves and diagram, and the Grad-CAM grids of the most frequent confusions."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from imgcls.config import layout
from imgcls.config.params import Params
from imgcls.data.transforms import to_model_input
from imgcls.evaluation.calibration import reliability_figure
from imgcls.evaluation.saliency import write_grids
from imgcls.files import replace_folder, write_csv, write_figure

log = logging.getLogger("evaluate")


def write_reliability(calibration: dict) -> list[Path]:
    """One CSV per curve (a DVC plot draws them together) and the diagram as a PNG, in plots/reliability."""
    with replace_folder(layout.RELIABILITY) as folder:
        for name, rows in calibration["bins"].items():
            write_csv(
                folder / f"{name}.csv",
                ["confidence", "accuracy", "images", "low", "high"],
                [
                    {k: row[k] for k in ("confidence", "accuracy", "images", "low", "high")}
                    for row in rows
                    if row["images"]
                ],
            )
        write_figure(folder / "reliability.png", reliability_figure(calibration))
    return [Path(layout.RELIABILITY) / "reliability.png"]


def write_saliency(
    params: Params, checkpoint: dict, model, test_set, device, memory, targets, logits
) -> list[Path]:
    """Grad-CAM grids of the most frequent confusions, in plots/saliency, replaced whole (no stale pair
    survives).
    """
    cfg = params.evaluate

    def load(indices: list[int]) -> torch.Tensor:
        return to_model_input(torch.stack([test_set[i][0] for i in indices]), device, memory)

    with replace_folder(layout.SALIENCY) as folder:
        grids = write_grids(
            model,
            checkpoint["arch"],
            load,
            targets,
            logits,
            checkpoint["class_names"],
            checkpoint["preprocessing"],
            folder,
            cfg.saliency_pairs,
            cfg.saliency_wrong,
            cfg.saliency_right,
        )
    log.info("Grad-CAM grids of the %d most frequent confusions in %s", len(grids), layout.SALIENCY)
    return [Path(layout.SALIENCY) / grid.name for grid in grids]


def write_confusion(
    path: str, dataset, targets: torch.Tensor, predicted: torch.Tensor, names: list[str]
) -> None:
    """One row per test image (DVC's confusion template counts them)."""
    root = Path(dataset.root)
    write_csv(
        path,
        ["file", "actual", "predicted"],
        [
            {
                "file": Path(file).relative_to(root).as_posix(),
                "actual": names[actual],
                "predicted": names[guess],
            }
            for (file, _), actual, guess in zip(dataset.samples, targets.tolist(), predicted.tolist())
        ],
    )
