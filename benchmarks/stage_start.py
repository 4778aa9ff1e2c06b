"""What a stage process pays before it works: the import of each stage module against `import torch,
torchvision` (the floor for any stage that computes), measured interleaved in one run, each in a fresh
interpreter. Also what each stage imports later, where it is used (MLflow, scikit-learn, ONNX, matplotlib),
and how much of torchvision's import is torch's compiler. Prints figures; asserts nothing.

Usage: python benchmarks/stage_start.py [--rounds 5]   (from the repository root)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # or --root: another checkout, to compare
STAGES = ("prepare", "pretrain", "train", "evaluate", "export")
BASELINES = {"torch": "import torch", "torch+torchvision": "import torch, torchvision"}
# What each stage imports where it is used, after its module has loaded (the rest of a real run's imports).
LATER = {
    "prepare": "import imgcls.data.decoding, imgcls.data.preparation",
    "pretrain": "import imgcls.engine.loop, imgcls.model.weights",
    "train": "import imgcls.engine.finetune, imgcls.provenance.runs, mlflow.tracking",
    "evaluate": "import imgcls.evaluation.plots, imgcls.provenance.run_outputs, mlflow.tracking, "
    "sklearn.metrics, matplotlib.pyplot",
    "export": "import imgcls.export.formats, imgcls.provenance.registry, mlflow.tracking, onnx, onnxruntime, "
    "torch.export",
}


def seconds(code: str, root: Path = ROOT) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - start


def import_tree(code: str) -> dict[str, float]:
    """Cumulative import seconds of each module `python -X importtime` reports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    found = {}
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            found.setdefault(match.group(3), int(match.group(1)) / 1e6)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose stages are imported")
    args = parser.parse_args()
    cases = dict(BASELINES)
    cases |= {f"stages.{stage}": f"import stages.{stage}" for stage in STAGES}
    cases |= {f"stages.{stage} + later": f"import stages.{stage}; {LATER[stage]}" for stage in STAGES}
    cases["python alone"] = "pass"
    times: dict[str, list[float]] = {name: [] for name in cases}
    seconds("import torch, torchvision")  # warm the file cache first
    for _ in range(args.rounds):
        for name, code in cases.items():
            times[name].append(seconds(code, args.root))
    median = {name: statistics.median(values) for name, values in times.items()}
    floor = median["torch+torchvision"]
    print(f"wall time of a fresh interpreter, median of {args.rounds} rounds; x torch+torchvision")
    for name, value in median.items():
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        print(f"  {name:28s} {value:6.2f} s  ({spread})  x{value / floor:.2f}")
    tree = import_tree("import torch, torchvision")
    dynamo = tree.get("torch._dynamo", 0.0)
    print(
        f"inside `import torch, torchvision` (-X importtime, one run): torch {tree.get('torch', 0):.2f} s, "
        f"torchvision {tree.get('torchvision', 0):.2f} s, of which torch._dynamo {dynamo:.2f} s "
        "(torchvision/__init__ imports ops, whose roi_align imports torch._dynamo)"
    )


if __name__ == "__main__":
    main()
