"""Classify images with an exported model: `python -m imgcls predict <export dir | MLflow model URI>
<image files or folders> [--out predictions.csv] [--runtime onnx|torch] [--force]`.

Every file gets a row: its prediction, or the reason it could not be read (never a crash that loses the
batch). The export's files are checked against its model card, and the card against the registry when it can
be reached, before anything is loaded. `--out` never overwrites a file that is not an earlier predictions
file, a file git tracks, or anything in a pipeline output or the export folder, unless `--force` says so."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from imgcls.config import layout
from imgcls.export.formats import RUNTIMES, class_probabilities, load_runtime, read_temperature, verify_export
from imgcls.files import printable, sha256_file, write_csv
from imgcls.provenance import store
from imgcls.provenance.git import git_tracked
from imgcls.serving.image_files import ImageFiles, keep_errors, list_images

log = logging.getLogger("predict")
FIELDS = ["path", "label", "probability", "top_k", "error"]


def check_out(out: Path, inputs: list[Path], export_dir: Path, force: bool) -> None:
    """Refuse to write the predictions over anything but an earlier predictions file, unless `force`."""
    target = out.resolve()
    if target.is_dir():
        raise IsADirectoryError(
            f"--out {printable(str(out))} is a folder; give a file name (e.g. predictions.csv)"
        )
    reasons = []
    if target.is_relative_to(export_dir.resolve()):
        reasons.append(f"it lies in the export folder {export_dir}")
    root = Path.cwd().resolve()
    owned = [o for o in layout.all_outputs() if target.is_relative_to((root / o).resolve())]
    if owned:
        reasons.append(f"it lies in {owned[0]}, a pipeline output")
    if target.exists() and git_tracked(target.parent, [target.name]):
        reasons.append("git tracks it")
    if any(target == item.resolve() for item in inputs):
        reasons.append("it is one of the images to classify")
    if target.exists() and not is_predictions_file(target):
        reasons.append("it exists and is not a predictions file")
    if reasons and not force:
        raise FileExistsError(
            f"--out {printable(str(out))}: not written, {'; '.join(reasons)}. Choose another path, "
            "or add --force to overwrite it"
        )


def is_predictions_file(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.readline().rstrip(b"\r\n") == ",".join(FIELDS).encode()


def resolve_model(source: str) -> Path:
    """An export folder as is; an MLflow model URI (models:/name/1, runs:/id/model, a path) is loaded from the
    store (MLFLOW_TRACKING_URI, else mlflow.db here), whose damage or move is one line."""
    if Path(source, "labels.json").is_file():
        return Path(source)
    import mlflow
    from mlflow.exceptions import MlflowException

    store.open_store(store.tracking_uri())
    try:
        return mlflow.pyfunc.load_model(source).unwrap_python_model().folder
    except MlflowException as error:
        raise RuntimeError(f"cannot load {source}: {' '.join(error.message.split())[:300]}") from None


def predict(
    export_dir: Path,
    paths: list[Path],
    runtime: str,
    device: str,
    batch_size: int,
    top_k: int,
    workers: int = 0,
) -> list[dict]:
    """One row per file: predicted label, probability and top-k, or the reason it could not be read. The
    export's files are checked against its model card first, and the card against the registry it names."""
    from imgcls.provenance.registry import check_registered

    card = verify_export(export_dir)
    log.info("%s", check_registered(card, sha256_file(export_dir / "model_card.json"), export_dir))
    labels = json.loads((export_dir / "labels.json").read_text())
    spec = json.loads((export_dir / "preprocessing.json").read_text())
    logits_of = load_runtime(export_dir, runtime, device)
    temperature = read_temperature(export_dir)
    loader = DataLoader(
        ImageFiles(paths, spec), batch_size=batch_size, num_workers=workers, collate_fn=keep_errors
    )
    rows: list[dict] = [{}] * len(paths)
    start, done = time.perf_counter(), 0
    for number, (indices, images, failures) in enumerate(loader, 1):
        for index, error in failures:
            rows[index] = {
                "path": str(paths[index]),
                "label": "",
                "probability": "",
                "top_k": "",
                "error": error,
            }
        if indices:
            probabilities = class_probabilities(logits_of(images.numpy()), temperature).numpy()
            for index, p in zip(indices, probabilities):
                best = np.argsort(-p)[:top_k]
                rows[index] = {
                    "path": str(paths[index]),
                    "label": labels[best[0]],
                    "probability": round(float(p[best[0]]), 6),
                    "error": "",
                    "top_k": ";".join(f"{labels[i]}:{p[i]:.4f}" for i in best),
                }
        done += len(indices) + len(failures)
        log.info(
            "batch %d/%d: %d files, %.1f images/s",
            number,
            len(loader),
            done,
            done / (time.perf_counter() - start),
        )
    return rows


def at_least(low: int):
    def parse(value: str) -> int:
        number = int(value)
        if number < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return number

    return parse


def argument_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests/test_docs.py parses every command the docs show with it)."""
    parser = argparse.ArgumentParser(
        prog="python -m imgcls predict", description="Classify images with an exported model."
    )
    parser.add_argument(
        "model", help="export folder (models/export) or MLflow model URI (models:/NAME/VERSION)"
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders (read recursively)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument(
        "--force", action="store_true", help="overwrite --out even if it is not a predictions file"
    )
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnx")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=at_least(1), default=64)
    parser.add_argument("--top-k", type=at_least(1), default=3, help="classes listed per image (at most all)")
    parser.add_argument(
        "--workers", type=at_least(0), default=0, help="decoding processes (0: in this process)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = argument_parser().parse_args(argv)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    try:
        paths, problems = list_images(args.inputs)
        export_dir = resolve_model(args.model)
        check_out(args.out, args.inputs, export_dir, args.force)
        rows = predict(export_dir, paths, args.runtime, device, args.batch_size, args.top_k, args.workers)
    except (OSError, ValueError, RuntimeError) as error:
        log.error("%s: %s", type(error).__name__, printable(str(error)))
        return 1
    rows += [
        {"path": str(path), "label": "", "probability": "", "top_k": "", "error": why}
        for path, why in problems.items()
    ]
    write_csv(
        args.out, FIELDS, [{k: printable(str(v)) for k, v in row.items()} for row in rows], spreadsheet=True
    )
    failed = sum(1 for r in rows if r["error"])
    log.info(
        "%d files -> %s: %d predicted, %d unreadable (see the error column); %.1f images/s with %s on %s",
        len(rows),
        args.out,
        len(rows) - failed,
        failed,
        len(rows) / (time.perf_counter() - start),
        args.runtime,
        device,
    )
    if failed == len(rows):
        log.error(
            "no file could be classified: %s",
            f"{failed} unreadable, reasons in {args.out}"
            if rows
            else "no files in " + ", ".join(printable(str(i)) for i in args.inputs),
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
