"""Proof and cost of `runtime.reproducible`: the sample's stages under CPU ISA caps, pinned and unpinned.

Each library that picks kernels per processor is capped the way an older CPU would cap it: ATen
(ATEN_CPU_CAPABILITY), oneDNN (ONEDNN_MAX_CPU_ISA), MKL (MKL_ENABLE_INSTRUCTIONS), glibc's libm
(GLIBC_TUNABLES hwcaps) and numpy (NPY_DISABLE_CPU_FEATURES). For each mode and cap it runs prepare, pretrain,
train and evaluate in a scratch copy of this repository and prints the time and the SHA-256 of
models/pretrained.pt, models/model.pt and every metrics file. Pinned runs must give the same hashes under
every cap; unpinned runs are expected to differ.

Usage: python benchmarks/reproducible_mode.py [--caps avx2 avx] [--modes pinned unpinned] [--epochs-scale 1.0]
(about 4 runs x 5 min at full scale on 2 cores).
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
CAPS = {  # what each library may use, standing in for a processor that has only these instructions
    "avx2": {},  # this machine as it is (x86-64 with AVX2 and FMA)
    "avx": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "AVX",
        "MKL_ENABLE_INSTRUCTIONS": "AVX",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F",
        "NPY_DISABLE_CPU_FEATURES": "AVX2 FMA3",
    },
    "sse4.2": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX,-AVX512F",
        "NPY_DISABLE_CPU_FEATURES": "AVX2 FMA3 F16C AVX",
    },
}
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
    parser.add_argument("--caps", nargs="+", default=["avx2", "avx"], choices=list(CAPS))
    parser.add_argument("--modes", nargs="+", default=["pinned", "unpinned"], choices=["pinned", "unpinned"])
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="shrink pretrain/train epochs for a quick look"
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            for cap in args.caps:
                folder = Path(scratch) / f"{mode}-{cap}"
                scratch_copy(folder, mode == "pinned", args.epochs_scale)
                env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
                env |= CAPS[cap] | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
                times = run_stages(folder, env)
                fingerprint = json.loads((folder / "metrics/environment/train.json").read_text())
                evaluation = json.loads((folder / "metrics/evaluate.json").read_text())
                results.append(
                    {
                        "mode": mode,
                        "cap": cap,
                        "times": times,
                        "kernels": fingerprint["kernel_isa"],
                        "blas": fingerprint["blas"],
                        "accuracy": evaluation["test_accuracy"],
                        "hashes": {name: sha(folder / name) for name in HASHED},
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    print(
        f"\n{'mode':9} {'cap':7} {'kernels':8} {'blas':15} {'pretrain s':>10} {'train s':>8} {'total s':>8} "
        f"{'accuracy':>8}  pretrained.pt     model.pt          evaluate.json"
    )
    for r in results:
        print(
            f"{r['mode']:9} {r['cap']:7} {r['kernels']:8} {r['blas']:15} {r['times']['pretrain']:10.1f} "
            f"{r['times']['train']:8.1f} {sum(r['times'].values()):8.1f} {r['accuracy']:8.4f}  "
            f"{r['hashes']['models/pretrained.pt']}  {r['hashes']['models/model.pt']}  "
            f"{r['hashes']['metrics/evaluate.json']}"
        )
    for mode in args.modes:
        runs = [r for r in results if r["mode"] == mode]
        differ = [name for name in HASHED if len({r["hashes"][name] for r in runs}) > 1]
        print(
            f"{mode} across caps {', '.join(r['cap'] for r in runs)}: "
            + (
                f"different bytes for {', '.join(differ)}"
                if differ
                else f"identical bytes for {', '.join(HASHED)}"
            )
        )
    native = {r["mode"]: r for r in results if r["cap"] == args.caps[0]}
    if {"pinned", "unpinned"} <= set(native):  # the cost on this processor as it is
        slow, fast = (sum(native[m]["times"].values()) for m in ("pinned", "unpinned"))
        pre_slow, pre_fast = (native[m]["times"]["pretrain"] for m in ("pinned", "unpinned"))
        print(
            f"cost of reproducible mode at {args.caps[0]}: {slow:.0f} s against {fast:.0f} s unpinned "
            f"({slow / fast:.2f}x); pretraining alone {pre_slow:.0f} s against {pre_fast:.0f} s "
            f"({pre_slow / pre_fast:.2f}x)"
        )


if __name__ == "__main__":
    main()
