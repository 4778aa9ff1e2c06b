"""Benchmark: prepare's decode + resize throughput (files/s) on a few thousand photo-sized JPEGs, and an
incremental prepare after 1% more images are added.

Usage: python benchmarks/prepare_throughput.py [--images 3000] [--workers 1 0] [--add 30]
Builds the folder in a temp dir (500x375 JPEGs, 4 classes), then times a full prepare.run per worker count
(0 = one process per CPU core; data/prepared emptied before each), then adds `--add` images (default 1%) and
times prepare.run again with the last worker count: only the new images are decoded. Prints one line per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.config.params import load_params
from stages import prepare
from stages.entry import build_context


def make_photos(root: Path, count: int, start: int = 0) -> None:
    base = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(base, i, axis=1) // 2 + rng.integers(0, 128, (1, 1, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i:05d}.jpg", quality=90)


def timed_prepare(params) -> tuple[dict, float]:
    """prepare.run in this folder: (its metrics, wall seconds)."""
    start = time.perf_counter()
    metrics = prepare.run(build_context("prepare", params, computes=False))
    return metrics, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--add", type=int, default=None, help="images added for the incremental run (1%%)")
    args = parser.parse_args()
    added = max(1, args.images // 100) if args.add is None else args.add
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        make_photos(data, args.images)
        params_file = Path("params.yaml").absolute()
        os.chdir(tmp)  # prepare writes data/prepared and metrics/ here
        for workers in args.workers:
            shutil.rmtree("data/prepared", ignore_errors=True)  # a full prepare: nothing to reuse
            params = load_params(
                params_file,
                overrides={
                    "prepare": {
                        "data": str(data),
                        "test_data": str(data),
                        "test_fraction": 0.1,
                        "image_size": args.image_size,
                        "workers": workers,
                    }
                },
            )
            metrics, seconds = timed_prepare(params)
            print(
                f"workers={workers or os.cpu_count()} ({'all cores' if workers == 0 else 'fixed'}): "
                f"{metrics['input_files']} files in {seconds:.1f} s = "
                f"{metrics['input_files'] / seconds:.0f} files/s "
                f"(500x375 JPEG -> short side {args.image_size} {params.prepare.format}, "
                f"quality {params.prepare.jpeg_quality})"
            )
        make_photos(data, added, start=args.images)
        metrics, incremental = timed_prepare(params)
        print(
            f"incremental, workers={workers or os.cpu_count()}: +{added} images to {args.images}, "
            f"{metrics['input_files']} files in {incremental:.2f} s = {incremental / seconds:.1%} of the "
            f"full prepare ({seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
