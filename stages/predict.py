"""Classify images with an exported model: `python -m stages.predict <export dir | MLflow model URI>
<image files or folders> [--out predictions.csv] [--runtime onnx|torch]`.

Unreadable files get a row with the reason, never a crash that loses the batch."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from stages.data import eval_transform
from stages.exported import RUNTIMES, class_probabilities, load_runtime, read_temperature, verify_export
from stages.imagefolder import BadImage, decode_image
from stages.outputs import write_csv

log = logging.getLogger("predict")
FIELDS = ["path", "label", "probability", "top_k", "error"]


class ImageFiles(Dataset):
    """(index, preprocessed tensor or None, error message) per file."""

    def __init__(self, paths: list[Path], spec: dict):
        self.paths, self.transform = paths, eval_transform(spec)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(decode_image(self.paths[index].read_bytes())), ""
        except BadImage as error:
            return index, None, f"{error.kind}: {error}"
        except OSError as error:
            return index, None, f"unreadable: {error}"


def keep_errors(batch):
    """Collate that stacks the readable images and passes the failures through."""
    good = [(i, t) for i, t, _ in batch if t is not None]
    images = torch.stack([t for _, t in good]) if good else torch.empty(0)
    return [i for i, _ in good], images, [(i, e) for i, t, e in batch if t is None]


def list_images(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expanded recursively (every file, so none is skipped silently)."""
    paths = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file())
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist")
    return paths


def resolve_model(source: str) -> Path:
    """An export folder as is; an MLflow model URI (models:/name/1, runs:/id/model, a path) is downloaded."""
    if Path(source, "labels.json").is_file():
        return Path(source)
    import mlflow

    from stages import tracking
    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow.pyfunc.load_model(source).unwrap_python_model().folder


def predict(export_dir: Path, paths: list[Path], runtime: str, device: str, batch_size: int, top_k: int,
            workers: int = 0) -> list[dict]:
    """One row per file: predicted label, probability and top-k, or the reason it could not be read. The
    export's files are checked against its model card first."""
    verify_export(export_dir)
    labels = json.loads((export_dir / "labels.json").read_text())
    spec = json.loads((export_dir / "preprocessing.json").read_text())
    logits_of = load_runtime(export_dir, runtime, device)
    temperature = read_temperature(export_dir)
    loader = DataLoader(ImageFiles(paths, spec), batch_size=batch_size, num_workers=workers, collate_fn=keep_errors)
    rows: list[dict] = [{}] * len(paths)
    start, done = time.perf_counter(), 0
    for number, (indices, images, failures) in enumerate(loader, 1):
        for index, error in failures:
            rows[index] = {"path": str(paths[index]), "label": "", "probability": "", "top_k": "", "error": error}
        if indices:
            probabilities = class_probabilities(logits_of(images.numpy()), temperature).numpy()
            for index, p in zip(indices, probabilities):
                best = np.argsort(-p)[:top_k]
                rows[index] = {"path": str(paths[index]), "label": labels[best[0]],
                               "probability": round(float(p[best[0]]), 6), "error": "",
                               "top_k": ";".join(f"{labels[i]}:{p[i]:.4f}" for i in best)}
        done += len(indices) + len(failures)
        log.info("batch %d/%d: %d files, %.1f images/s", number, len(loader), done,
                 done / (time.perf_counter() - start))
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description="Classify images with an exported model.")
    parser.add_argument("model", help="export folder (models/export) or MLflow model URI (models:/NAME/VERSION)")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders (read recursively)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnx")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: in this process)")
    args = parser.parse_args(argv)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    paths = list_images(args.inputs)
    start = time.perf_counter()
    try:
        rows = predict(resolve_model(args.model), paths, args.runtime, device, args.batch_size, args.top_k,
                       args.workers)
    except (OSError, ValueError, RuntimeError) as error:
        log.error("%s: %s", type(error).__name__, error)
        return 1
    write_csv(args.out, FIELDS, rows)
    failed = sum(1 for r in rows if r["error"])
    log.info("%d files -> %s: %d predicted, %d unreadable (see the error column); %.1f images/s with %s on %s",
             len(rows), args.out, len(rows) - failed, failed, len(rows) / (time.perf_counter() - start),
             args.runtime, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
