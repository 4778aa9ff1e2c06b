"""Benchmark: `dvc repro` with nothing changed, on this pipeline with a large prepared dataset.

Usage: python benchmarks/dvc_noop.py [--images 10000 100000] [--repeat 3]

For each size it builds a scratch git + DVC repository holding this project's dvc.yaml, params.yaml, stages/
and imgcls/, fills it with that many distinct 8-px PNGs (the no-op cost is per file, not per pixel), runs the
whole pipeline once (small and fast: no pretraining, one epoch), then times `dvc repro` and `dvc status` with
nothing changed, beside a bare one-stage pipeline over the same files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def sh(repo: Path, *command: str) -> float:
    """Run a command in `repo`, failing loudly; returns its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(
            f"{' '.join(command)} failed in {repo}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return time.perf_counter() - start


def make_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        label = index % CLASSES
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        pixels[0, 0] = (label * 25, 0, 0)  # distinct files (prepare drops duplicates), a learnable corner
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"c{label}" / f"{index:07d}.png")


def make_repo(repo: Path, images: int) -> None:
    for code in ("stages", "imgcls"):
        shutil.copytree(ROOT / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runtime"].update(reproducible=False, threads=0)
    params["prepare"].update(
        data="data/target", test_data="data/target", test_fraction=0.2, image_size=8, min_size=1
    )
    params["pretrain"].update(source="none", data="data/target")
    params["train"].update(crop_size=8, epochs=1, batch_size=256)
    params["evaluate"].update(batch_size=1024, bootstrap=100)
    params["export"].update(atol=1e-3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_images(repo / "data" / "target", images)
    (repo / ".gitignore").write_text("mlflow.db\nmlflow.db.lock\nmlartifacts/\n__pycache__/\n")
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "bench@example.com"],
        ["git", "config", "user.name", "bench"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        sh(repo, *command)
    sh(repo, "dvc", "add", "-q", "data/target")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "bench")


def bare_noop(repo: Path, repeat: int) -> float:
    """A one-stage pipeline whose only dep is the same image folder: what DVC itself costs."""
    bare = repo.parent / "bare"
    bare.mkdir()
    (bare / "data").symlink_to(repo / "data")
    (bare / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "count": {
                        "cmd": "find data/target -type f | wc -l > count.txt",
                        "deps": ["data/target"],
                        "outs": ["count.txt"],
                    }
                }
            }
        )
    )
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        sh(bare, *command)
    sh(bare, "dvc", "repro", "-q")
    return min(sh(bare, "dvc", "repro", "-q") for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for images in args.images:
        with tempfile.TemporaryDirectory() as scratch:
            repo = Path(scratch) / "repo"
            repo.mkdir()
            start = time.perf_counter()
            make_repo(repo, images)
            made = time.perf_counter() - start
            full = sh(repo, "dvc", "repro")
            sh(repo, "git", "add", "-A")
            sh(repo, "git", "commit", "-qm", "run")
            noop = [sh(repo, "dvc", "repro") for _ in range(args.repeat)]
            status = sh(repo, "dvc", "status")
            files = sum(1 for p in (repo / "data").rglob("*") if p.is_file())
            bare = bare_noop(repo, args.repeat)
            runs = ", ".join(f"{t:.2f}" for t in noop)
            print(
                f"{images:,} images ({files:,} files under data/, made in {made:.0f} s): full dvc repro "
                f"{full:.0f} s; no-op dvc repro {min(noop):.2f} s (runs: {runs}); dvc status {status:.2f} s; "
                f"bare one-stage no-op over data/target {bare:.2f} s"
            )


if __name__ == "__main__":
    main()
