"""Pretrained against scratch on the shipped sample over several seeds: how much of the gain is noise.

For each seed (pretrain.seed and train.seed together) it runs prepare and pretrain once in a scratch copy of
this repository, then train and evaluate for each variant:
- `pretrained`: params.yaml as it is (the backbone pretrained on data/sample/source, head trained);
- `scratch`: a random init trained whole, at the learning rate that suits training from scratch.
It prints one JSON row per run and a summary (mean, standard deviation, range), and writes them to --out.
`python -m imgcls reproduce` widens its band for headline metrics with this spread.

Usage: python benchmarks/seed_sweep.py [--seeds 42 1 2 3] [--out benchmarks/seed_sweep.json]
(about 2.5 minutes a seed on 2 cores, in reproducible mode).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "pretrained": {},
    "scratch": {"pretrain.source": "none", "train.freeze": "none", "train.lr": 0.001},
}


def write_params(folder: Path, overrides: dict) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runtime"]["allow_dirty"] = True  # the scratch copy is no git repository
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(folder: Path, name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{name}"], cwd=folder, env=env, capture_output=True, text=True
    )
    if result.returncode:
        sys.exit(f"{name} failed in {folder}:\n{result.stderr[-3000:]}")


def run_seed(scratch: Path, seed: int) -> list[dict]:
    base = scratch / f"seed-{seed}"
    for code in ("stages", "imgcls"):
        shutil.copytree(ROOT / code, base / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "sample", base / "data" / "sample")
    seeds = {"pretrain.seed": seed, "train.seed": seed}
    write_params(base, seeds)
    stage(base, "prepare")
    stage(base, "pretrain")
    rows = []
    for variant, overrides in VARIANTS.items():
        folder = scratch / f"seed-{seed}-{variant}"
        shutil.copytree(base, folder, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
        write_params(folder, seeds | overrides)
        if "pretrain.source" in overrides:
            stage(folder, "pretrain")
        stage(folder, "train")
        stage(folder, "evaluate")
        evaluation = json.loads((folder / "metrics/evaluate.json").read_text())
        rows.append(
            {
                "variant": variant,
                "seed": seed,
                "test_accuracy": evaluation["test_accuracy"],
                "test_f1_macro": evaluation["test_f1_macro"],
                "best_epoch": json.loads((folder / "metrics/train.json").read_text())["best_epoch"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for variant in VARIANTS:
        for metric in ("test_accuracy", "test_f1_macro"):
            values = [r[metric] for r in rows if r["variant"] == variant]
            summary.setdefault(variant, {})[metric] = {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
                "seeds": len(values),
            }
    gains = [
        p["test_accuracy"] - s["test_accuracy"]
        for p, s in zip(
            (r for r in rows if r["variant"] == "pretrained"), (r for r in rows if r["variant"] == "scratch")
        )
    ]
    summary["gain_test_accuracy"] = {"mean": statistics.fmean(gains), "min": min(gains), "max": max(gains)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "seed_sweep.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows = [row for seed in args.seeds for row in run_seed(Path(scratch), seed)]
    from imgcls.config.params import load_params, params_hash

    result = {
        "params_sha256": params_hash(load_params(ROOT / "params.yaml").as_dict()),
        "variants": VARIANTS,
        "runs": rows,
        "summary": summarize(rows),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
