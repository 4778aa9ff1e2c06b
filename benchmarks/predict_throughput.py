"""Benchmark: `python -m imgcls predict` throughput (images/s) with each runtime on the prepared test split.

Usage: python benchmarks/predict_throughput.py [--export models/export] [--repeat 10] [--batch-size 64]
Needs a finished `dvc repro`. Repeats the test images to get a few thousand predictions per runtime.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from imgcls.export.formats import RUNTIMES
from imgcls.serving.predict import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=Path("models/export"))
    parser.add_argument("--images", type=Path, default=Path("data/prepared/test"))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    paths = sorted(p for p in args.images.rglob("*") if p.is_file()) * args.repeat
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for runtime in RUNTIMES:
        predict(args.export, paths[: args.batch_size], runtime, device, args.batch_size, 3)  # warm-up
        start = time.perf_counter()
        rows = predict(args.export, paths, runtime, device, args.batch_size, 3)
        seconds = time.perf_counter() - start
        print(
            f"{runtime:6s} on {device}: {len(rows)} images in {seconds:.1f} s = {len(rows) / seconds:.0f} "
            "images/s "
            f"(batch {args.batch_size}, decode + preprocess + model, {torch.get_num_threads()} threads)"
        )


if __name__ == "__main__":
    main()
