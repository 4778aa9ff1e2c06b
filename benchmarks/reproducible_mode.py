"""The sample's stages pinned and unpinned on this CPU: prepare, pretrain, train and evaluate in a scratch
copy of this repository, each runtime in its own processes, with the time of each stage and the SHA-256 of
models/pretrained.pt, models/model.pt and every metrics file. Pinned runs are the same bytes on every CPU:
tests/engine/test_cross_cpu.py proves that under emulated Intel and AMD processors; this script says what the
guarantee costs here, for the whole sample, and shows that the unpinned bytes differ from the pinned ones.

Usage: python benchmarks/reproducible_mode.py [--modes pinned unpinned] [--rounds 1] [--epochs-scale 1.0]
(about 2 x 3 min a round at full scale on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "pretrain", "train", "evaluate")
HASHED = (
    "models/pretrained.pt",
    "models/model.pt",
    "metrics/prepare.json",
    "metrics/pretrain.json",
    "metrics/train.json",
    "metrics/evaluate.json",
)


def scratch_copy(folder: Path, reproducible: bool, epochs_scale: float) -> None:
    """The pipeline's code, params and sample data in `folder`, with runtime.reproducible set."""
    for code in ("stages", "imgcls"):
        shutil.copytree(ROOT / code, folder / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "sample", folder / "data" / "sample")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runtime"]["reproducible"] = reproducible
    params["runtime"]["allow_dirty"] = True  # the scratch copy is no git repository
    for section in ("pretrain", "train"):
        params[section]["epochs"] = max(1, round(params[section]["epochs"] * epochs_scale))
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stages(folder: Path, env: dict) -> dict[str, float]:
    times = {}
    for stage in STAGES:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"], cwd=folder, env=env, capture_output=True, text=True
        )
        times[stage] = time.perf_counter() - start
        if result.returncode:
            sys.exit(f"{stage} failed in {folder}:\n{result.stderr[-3000:]}")
    return times


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["pinned", "unpinned"], choices=["pinned", "unpinned"])
    parser.add_argument("--rounds", type=int, default=1, help="each mode this often, interleaved")
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="shrink pretrain/train epochs for a quick look"
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(args.rounds):
            for mode in args.modes:
                folder = Path(scratch) / f"{mode}-{round_number}"
                scratch_copy(folder, mode == "pinned", args.epochs_scale)
                env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
                env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
                times = run_stages(folder, env)
                fingerprint = json.loads((folder / "metrics/environment/train.json").read_text())
                evaluation = json.loads((folder / "metrics/evaluate.json").read_text())
                results.append(
                    {
                        "mode": mode,
                        "round": round_number + 1,
                        "times": times,
                        "kernels": f"{fingerprint['kernel_isa']}/{fingerprint.get('onednn_isa', 'off')}",
                        "accuracy": evaluation["test_accuracy"],
                        "hashes": {name: sha(folder / name) for name in HASHED},
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    print(
        f"\n{'mode':9} {'round':>5} {'kernels':22} {'pretrain s':>10} {'train s':>8} {'total s':>8} "
        f"{'accuracy':>8}  pretrained.pt     model.pt          evaluate.json"
    )
    for r in results:
        print(
            f"{r['mode']:9} {r['round']:5} {r['kernels']:22} {r['times']['pretrain']:10.1f} "
            f"{r['times']['train']:8.1f} {sum(r['times'].values()):8.1f} {r['accuracy']:8.4f}  "
            f"{r['hashes']['models/pretrained.pt']}  {r['hashes']['models/model.pt']}  "
            f"{r['hashes']['metrics/evaluate.json']}"
        )
    for round_number in range(1, args.rounds + 1):
        both = {r["mode"]: r for r in results if r["round"] == round_number}
        if {"pinned", "unpinned"} <= set(both):
            slow, fast = (sum(both[m]["times"].values()) for m in ("pinned", "unpinned"))
            pre_slow, pre_fast = (both[m]["times"]["pretrain"] for m in ("pinned", "unpinned"))
            same = [n for n in HASHED if both["pinned"]["hashes"][n] == both["unpinned"]["hashes"][n]]
            print(
                f"round {round_number}: pinned {slow:.0f} s against {fast:.0f} s unpinned "
                f"({slow / fast:.2f}x); "
                f"pretraining alone {pre_slow:.0f} s against {pre_fast:.0f} s ({pre_slow / pre_fast:.2f}x); "
                f"the same bytes pinned and unpinned: {', '.join(same) or 'none'}"
            )


if __name__ == "__main__":
    main()
