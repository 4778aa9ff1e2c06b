"""Benchmark: a no-op `dvc repro` on this pipeline over a large image folder, and where the time goes.

Usage: python benchmarks/dvc_noop.py [--images 10000 100000] [--repeat 5]

For each size it builds a scratch git + DVC repository the way the README's "your own images" recipe leaves
one: the project's dvc.yaml, stages/ and imgcls/, that many distinct 8-px PNGs in `data/my_images` tracked
with `dvc add`, `prepare.test_data: data/none` (the test split drawn from data/my_images) and
`pretrain.source: none` with `pretrain.data: data/none`. It runs the pipeline once (small: one epoch), then
times no-op `dvc repro`s, interleaved with those of two other repositories: a copy with `prepare.test_data`
naming data/my_images itself and `pretrain.data` left at the sample's 5,000-image folder (what the recipe
said before data/none), and DVC's floor, a bare two-stage DVC pipeline over the same folder (a `dvc add`ed
input, one stage writing a folder of as many files, one stage reading a file from it), where every folder is
walked once. Each no-op is then split into DVC's start-up, each folder DVC walks, its YAML parsing and the
rest."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
IMAGES = "data/my_images"

# Runs one no-op `dvc repro` in-process with DVC's folder walk and YAML parser timed; prints a JSON line.
SPLIT = """
import json, sys, time, collections
import dvc_data.hashfile.build as build
import dvc.utils.serialize._yaml as dvc_yaml
import dvc.utils.strictyaml as strict_yaml
from dvc.cli import main
walks, parses = collections.defaultdict(list), collections.defaultdict(float)
def timed(table, original, key):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.perf_counter() - start
            name = key(args, kwargs)
            if isinstance(table[name], list):
                table[name].append(spent)
            else:
                table[name] += spent
    return wrapper
build._build_tree = timed(walks, build._build_tree, lambda a, k: str(a[0]))
dvc_yaml.parse_yaml = strict_yaml.parse_yaml = timed(parses, dvc_yaml.parse_yaml, lambda a, k: str(a[1]))
start = time.perf_counter()
code = main(["repro", "-q"])
print(json.dumps({"code": code, "total": time.perf_counter() - start, "walks": walks, "parses": parses}))
"""


def sh(repo: Path, *command: str) -> float:
    """Run a command in `repo`, failing loudly; returns its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=3600)
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


def init(repo: Path) -> None:
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "bench@example.com"],
        ["git", "config", "user.name", "bench"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        sh(repo, *command)


def make_repo(repo: Path, images: int) -> None:
    for code in ("stages", "imgcls"):
        shutil.copytree(ROOT / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "sample" / "source", repo / "data" / "sample" / "source")
    shutil.copytree(ROOT / "data" / "none", repo / "data" / "none")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runtime"].update(reproducible=False, threads=0)
    params["prepare"].update(data=IMAGES, test_data="data/none", test_fraction=0.2, image_size=8, min_size=1)
    params["pretrain"].update(source="none", data="data/none")
    params["train"].update(crop_size=8, epochs=1, batch_size=256)
    params["evaluate"].update(batch_size=1024, bootstrap=100)
    params["export"].update(atol=1e-3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_images(repo / IMAGES, images)
    (repo / ".gitignore").write_text("mlflow.db\nmlflow.db.lock\nmlartifacts/\n__pycache__/\n")
    init(repo)
    sh(repo, "dvc", "add", "-q", IMAGES)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "bench")


def make_floor(repo: Path) -> Path:
    """DVC's floor for this shape: a `dvc add`ed folder, a stage that writes a folder of as many files, and a
    stage that reads one file from it. Every folder is walked once."""
    bare = repo.parent / "floor"
    (bare / "data").mkdir(parents=True)
    shutil.copytree(repo / IMAGES, bare / IMAGES, copy_function=os.link)  # DVC refuses a linked folder
    stages = {
        "copy": {
            "cmd": f"cp -r {IMAGES} data/out && ls data/out > data/out/list.txt",
            "deps": [IMAGES],
            "outs": ["data/out"],
        },
        "count": {
            "cmd": "wc -l < data/out/list.txt > count.txt",
            "deps": ["data/out/list.txt"],
            "outs": ["count.txt"],
        },
    }
    (bare / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    init(bare)
    sh(bare, "dvc", "add", "-q", IMAGES)
    sh(bare, "dvc", "repro", "-q")
    return bare


def split(repo: Path) -> str:
    """Where one no-op `dvc repro` spends its time."""
    import json

    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", SPLIT], cwd=repo, capture_output=True, text=True, timeout=3600, check=True
    )
    wall = time.perf_counter() - start
    report = json.loads(result.stdout.strip().splitlines()[-1])
    walks = [
        f"{Path(path).relative_to(repo)} x{len(times)} {sum(times):.2f} s"
        for path, times in report["walks"].items()
        if sum(times) > 0.01
    ]
    parsed = sum(report["parses"].values())
    walked = sum(sum(times) for times in report["walks"].values())
    return (
        f"python and DVC start-up {wall - report['total']:.2f} s; folder walks {walked:.2f} s "
        f"({'; '.join(walks)}); YAML parsing {parsed:.2f} s ({len(report['parses'])} files); "
        f"the rest {report['total'] - walked - parsed:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for images in args.images:
        with tempfile.TemporaryDirectory() as scratch:
            recipe, twice = Path(scratch) / "repo", Path(scratch) / "twice" / "repo"
            recipe.mkdir()
            start = time.perf_counter()
            make_repo(recipe, images)
            made = time.perf_counter() - start
            full = sh(recipe, "dvc", "repro")
            sh(recipe, "git", "add", "-A")
            sh(recipe, "git", "commit", "-qm", "run")
            shutil.copytree(recipe, twice, symlinks=True)
            name_twice(twice)
            floor = make_floor(recipe)
            times: dict[Path, list[float]] = {recipe: [], twice: [], floor: []}
            for _ in range(args.repeat):  # interleaved: the machine's load moves all three alike
                for repo in times:
                    times[repo].append(sh(repo, "dvc", "repro", "-q"))
            status = sh(recipe, "dvc", "status")
            best = {repo: min(runs) for repo, runs in times.items()}
            print(
                f"{images:,} images (made in {made:.0f} s): full dvc repro {full:.0f} s; no-op dvc repro, "
                f"best of {args.repeat} interleaved: the recipe {best[recipe]:.2f} s, the big folder named "
                f"twice {best[twice]:.2f} s, DVC's floor {best[floor]:.2f} s (the recipe / the floor "
                f"{best[recipe] / best[floor]:.2f}x); dvc status {status:.2f} s\n"
                f"  the recipe's no-op: {split(recipe)}\n"
                f"  with test_data = data/my_images and pretrain.data = data/sample/source: {split(twice)}\n"
                f"  the floor's: {split(floor)}",
                flush=True,
            )


def name_twice(repo: Path) -> None:
    """The recipe before data/none: the big folder named again as test_data, the sample's 5,000 pretraining
    images named for nothing."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["test_data"] = IMAGES
    params["pretrain"]["data"] = "data/sample/source"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "dvc", "repro")


if __name__ == "__main__":
    main()
