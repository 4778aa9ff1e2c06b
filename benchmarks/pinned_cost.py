"""What `runtime.reproducible: true` costs: the pinned runtime against the unpinned one, and against the pins
it replaced, on the work a user's run spends its time in. Each runtime runs in a fresh process (kernels are
chosen once per process), round after round, interleaved, so each ratio is measured in one run:

- full fine-tuning: ResNet-18 training steps (the pipeline's train_one_epoch, batch 32) at 112 and 224 px;
- the frozen-backbone feature pass: the same network forward in eval mode, at 112 and 224 px;
- the loader, per core: a 256-px JPEG decoded and randomly cropped and flipped to 224 px, one thread.

Runtimes: `unpinned` (each library picks its fastest kernels); `pinned` (imgcls.engine.runtime: ATen AVX2,
oneDNN capped at AVX2, MKL COMPATIBLE, fused AdamW); `before` (the pins until 2026-12: ATen's baseline
kernels, no oneDNN, MKL COMPATIBLE, unfused AdamW). Prints figures and ratios; asserts nothing.

Usage: python benchmarks/pinned_cost.py [--rounds 2] [--sizes 112 224] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("unpinned", "pinned", "before")
BEFORE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "MKL_DYNAMIC": "FALSE"}


def set_up(name: str, threads: int):
    """Pin this process as `name` asks, before any tensor work; returns the AdamW to train with."""
    import torch

    from imgcls.engine import runtime
    from imgcls.engine.recipe import make_optimizer

    if name == "before":
        os.environ.update(BEFORE_ENV, OMP_DYNAMIC="FALSE", OMP_NUM_THREADS=str(threads))
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
        return lambda model: torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    runtime.pin(name == "pinned", threads, torch.device("cpu"))
    return lambda model: make_optimizer(model, "adamw", 1e-3, 0.05, 0.9)


def training(optimizer_for, size: int, steps: int) -> float:
    """Seconds per 1,000 images of full fine-tuning (after one warm-up step)."""
    import torch

    from imgcls.engine.loop import train_one_epoch
    from imgcls.engine.recipe import make_scheduler
    from imgcls.model.networks import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    optimizer = optimizer_for(model)
    scheduler = make_scheduler(optimizer, 0, 100)
    batch = (torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8), torch.arange(32) % 10)
    loss = torch.nn.CrossEntropyLoss()
    channels_last, cpu = torch.channels_last, torch.device("cpu")
    model = model.to(memory_format=channels_last)
    for batches in ([batch], [batch] * steps):  # one warm-up step, then the timed ones
        start = time.perf_counter()
        train_one_epoch(
            model, batches, loss, optimizer, scheduler, cpu, log_every=10**9, memory_format=channels_last
        )
    return (time.perf_counter() - start) / (32 * steps) * 1000


def feature_pass(size: int, steps: int) -> float:
    """Seconds per 1,000 images of the backbone's forward pass in eval mode (cached features' one pass)."""
    import torch

    from imgcls.data.transforms import to_model_input
    from imgcls.model.networks import build_model

    model = build_model("resnet18", 10).eval().to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        model(to_model_input(images, torch.device("cpu"), torch.channels_last))
        start = time.perf_counter()
        for _ in range(steps):
            model(to_model_input(images, torch.device("cpu"), torch.channels_last))
    return (time.perf_counter() - start) / (32 * steps) * 1000


def loader(images: int) -> float:
    """Images per second, one thread, of the train loader's decode, crop and flip: 256-px JPEGs to 224 px."""
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    from imgcls.data.transforms import train_transform

    photo = Image.open(ROOT / "benchmarks" / "photos" / "grace_hopper.jpg").convert("RGB")
    files = []
    for index in range(16):  # 16 different crops of the photo, each resized to 256 px and saved as JPEG q95
        box = (index * 8, index * 6, index * 8 + 380, index * 6 + 480)
        buffer = io.BytesIO()
        photo.crop(box).resize((256, 323)).save(buffer, "JPEG", quality=95)
        files.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    crop = train_transform(224, 0.35, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker's one thread
    try:
        torch.manual_seed(0)
        start = time.perf_counter()
        for index in range(images):
            crop(decode_jpeg(files[index % len(files)]))
        return images / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def measure(name: str, sizes: list[int], steps: int, threads: int) -> dict:
    optimizer_for = set_up(name, threads)
    import torch

    found = {"kernels": torch.backends.cpu.get_cpu_capability()}
    for size in sizes:
        found[f"train {size} px"] = training(optimizer_for, size, steps)
        found[f"features {size} px"] = feature_pass(size, steps * 2)
    found["loader (images/s per core)"] = loader(300)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--steps", type=int, default=3, help="timed batches of 32 per training figure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.sizes, args.steps, args.threads)))
        return
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stages run (stages/__init__.py)
    rounds: list[dict] = []
    for number in range(args.rounds):
        found = {}
        for name in args.runtimes:
            command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps)]
            command += ["--threads", str(args.threads), "--sizes", *map(str, args.sizes)]
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
            if result.returncode:
                sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")
            found[name] = json.loads(result.stdout.strip().splitlines()[-1])
        rounds.append(found)
        print(f"round {number + 1}: {json.dumps(found)}", flush=True)
    print_table(rounds, args)


def print_table(rounds: list[dict], args) -> None:
    from imgcls.engine.runtime import cpu_isa, cpu_model

    names = args.runtimes
    machine = f"{cpu_model()} ({cpu_isa()}), {os.cpu_count()} cores"
    print(f"\n{machine}, {args.threads} threads, {len(rounds)} round(s)")
    print("kernels: " + ", ".join(f"{n} {rounds[0][n]['kernels']}" for n in names))
    print(f"{'':28}" + "".join(f"{n:>12}" for n in names) + "   ratio to unpinned, each round")
    for key in (k for k in rounds[0][names[0]] if k != "kernels"):
        medians = {n: statistics.median(r[n][key] for r in rounds) for n in names}
        unit = "" if "images/s" in key else " s"
        cells = "".join(f"{medians[n]:>10.1f}{unit or '  '}" for n in names)
        ratios = []
        for n in names[1:]:  # time ratios (slower is above 1); the loader's is its speed's inverse
            each = [
                (r["unpinned"][key] / r[n][key]) if unit == "" else (r[n][key] / r["unpinned"][key])
                for r in rounds
            ]
            ratios.append(f"{n} " + "/".join(f"{x:.2f}x" for x in each))
        print(f"{key + ('' if unit == '' else ' (s/1000 images)'):28}{cells}   " + "; ".join(ratios))


if __name__ == "__main__":
    main()
