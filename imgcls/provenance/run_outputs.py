"""What evaluate and export add to the model's MLflow run, without changing its status: the test metrics, the
report, the pictures (at the run's root, named alike in every run, and as keyed images), and the model card
with the hashes that tie it to DVC."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.export.formats import CARD_FILE
from imgcls.provenance import ui_links
from imgcls.provenance.runs import log_epoch_metrics

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def log_to_run(
    client,
    run_id: str,
    metrics: dict,
    report: dict,
    environment: dict,
    targets,
    predicted,
    class_names: list[str],
    figures: list[Path],
) -> None:
    """Add test metrics, the per-class report and gaps, the confusion matrix, the reliability diagram and the
    Grad-CAM grids to the train stage's run, without changing its status. The pictures are files at the run's
    artifact root under names every run shares (confusion_matrix.png, reliability.png, saliency_01.png...: the
    UI's Compare view shows the root files common to the runs), and keyed images under the same names, which
    the chart view shows side by side."""
    import matplotlib
    from sklearn.metrics import confusion_matrix

    matplotlib.use("Agg")
    from PIL import Image
    from sklearn.metrics import ConfusionMatrixDisplay

    values = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    values |= {
        f"{k}_{bound}": v[bound]
        for k, v in metrics.items()
        if k.endswith("_ci95")
        for bound in ("low", "high")
    }
    log_epoch_metrics(client, run_id, 0, values)
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
    pictures = {"confusion_matrix": display.figure_} | {
        ui_links.picture_name(path)[:-4]: path for path in figures
    }
    with tempfile.TemporaryDirectory() as scratch:
        for path in figures:
            shutil.copy(path, Path(scratch) / ui_links.picture_name(path))
            client.log_artifact(run_id, str(Path(scratch) / ui_links.picture_name(path)))
    for key, picture in pictures.items():
        if isinstance(picture, Path):
            with Image.open(picture) as image:
                client.log_image(run_id, image.convert("RGB"), key=key, step=0)
        else:
            picture.canvas.draw()
            client.log_image(
                run_id,
                Image.frombuffer(
                    "RGBA", picture.canvas.get_width_height(), picture.canvas.buffer_rgba()
                ).convert("RGB"),
                key=key,
                step=0,
            )
    matplotlib.pyplot.close(display.figure_)


def log_card(client: MlflowClient, run_id: str, out: Path, parity: dict, card: dict, card_sha: str) -> None:
    """Card, parity and the DVC hashes onto the run, without changing its status."""
    log_epoch_metrics(
        client,
        run_id,
        0,
        {f"export_{name}_{k}": v for name, figures in parity.items() for k, v in figures.items()},
    )
    client.log_artifact(run_id, str(out / CARD_FILE), "export")
    client.log_artifact(run_id, str(out / "model_card.md"), "export")
    tags = (
        {f"dvc.{name}_md5": value for name, value in card["dvc"].items()}
        | {"model_card_sha256": card_sha}
        | {f"{name}_sha256": sha for name, sha in card["model"]["files"].items() if "/" not in name}
    )
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
