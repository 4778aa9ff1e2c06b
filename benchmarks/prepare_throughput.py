"""Benchmark: prepare's decode + resize throughput (files/s) on a few thousand photo-sized JPEGs.

Usage: python benchmarks/prepare_throughput.py [--images 3000] [--workers 1 0]
Builds the folder in a temp dir (500x375 JPEGs, 4 classes), then times prepare.run per worker count
(0 = one process per CPU core). Prints one line per run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.config.params import load_params
from stages import prepare
from stages.entry import build_context


def make_photos(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    for i in range(count):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(base, i, axis=1) // 2 + rng.integers(0, 128, (1, 1, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0])
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        make_photos(data, args.images)
        params_file = Path("params.yaml").absolute()
        os.chdir(tmp)  # prepare writes data/prepared and metrics/ here
        for workers in args.workers:
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
            start = time.perf_counter()
            metrics = prepare.run(build_context("prepare", params, computes=False))
            seconds = time.perf_counter() - start
            print(
                f"workers={workers or os.cpu_count()} ({'all cores' if workers == 0 else 'fixed'}): "
                f"{metrics['input_files']} files in {seconds:.1f} s = "
                f"{metrics['input_files'] / seconds:.0f} files/s "
                f"(500x375 JPEG -> short side {args.image_size} {params.prepare.format}, "
                f"quality {params.prepare.jpeg_quality})"
            )


if __name__ == "__main__":
    main()
