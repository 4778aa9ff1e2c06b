"""What `runtime.reproducible: true` costs: the pinned runtime against the unpinned one, and against the pins
it replaced, on the work a user's run spends its time in:

- full fine-tuning: ResNet-18 training steps (the pipeline's train_one_epoch, batch 32) at 112 and 224 px;
- the frozen-backbone feature pass: the same network forward in eval mode, at 112 and 224 px;
- the loader, per core: a 256-px JPEG decoded and randomly cropped and flipped to 224 px, one thread.

Runtimes: `unpinned` (each library picks its fastest kernels); `pinned` (imgcls.engine.runtime: ATen AVX2,
oneDNN capped at AVX2, MKL COMPATIBLE, fused AdamW); `before` (the pins until 2026-12: ATen's baseline
kernels, no oneDNN, MKL COMPATIBLE, unfused AdamW). Kernels are chosen once per process, so each runtime is a
process of its own that waits for work; the measurements alternate between them, each task in every round,
so a ratio compares measurements taken seconds apart. Each is timed by the wall clock and by the process's
CPU time, which leaves out the time a shared virtual machine's host takes away (steal). Prints figures,
ratios and, with --profile, the extra time op by op; asserts nothing.

Usage: python benchmarks/pinned_cost.py [--rounds 5] [--sizes 112 224] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
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


class Work:
    """One runtime's tasks, built once (models, optimizers, batches, JPEGs), run on request."""

    def __init__(self, name: str, threads: int):
        import torch

        from imgcls.engine.recipe import make_scheduler
        from imgcls.model.networks import build_model

        optimizer_for = set_up(name, threads)
        torch.manual_seed(0)
        self.torch, self.cpu, self.layout = torch, torch.device("cpu"), torch.channels_last
        self.model = build_model("resnet18", 10).to(memory_format=self.layout)
        self.optimizer = optimizer_for(self.model)
        self.scheduler = make_scheduler(self.optimizer, 0, 10**6)
        self.files = jpegs()

    def batch(self, size: int):
        torch = self.torch
        return torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8), torch.arange(32) % 10

    def train(self, size: int, steps: int) -> float:
        """Images of full fine-tuning, `steps` batches of 32 (after one warm-up step)."""
        from imgcls.engine.loop import train_one_epoch

        loss = self.torch.nn.CrossEntropyLoss()
        batch = self.batch(size)
        for batches in ([batch], [batch] * steps):
            clocks = start()
            train_one_epoch(
                self.model, batches, loss, self.optimizer, self.scheduler, self.cpu, log_every=10**9,
                memory_format=self.layout,
            )  # fmt: skip
        return stop(clocks, 32 * steps)

    def features(self, size: int, steps: int) -> dict:
        """The backbone's forward pass in eval mode (cached features' one pass), `steps` batches of 32."""
        from imgcls.data.transforms import to_model_input

        images = self.batch(size)[0]
        self.model.eval()
        with self.torch.no_grad():
            for count in (1, steps):
                clocks = start()
                for _ in range(count):
                    self.model(to_model_input(images, self.cpu, self.layout))
        return stop(clocks, 32 * steps)

    def loader(self, images: int) -> dict:
        """The train loader's decode, crop and flip of 256-px JPEGs to 224 px, on one thread."""
        from torchvision.io import decode_jpeg

        from imgcls.data.transforms import train_transform

        crop, threads = train_transform(224, 0.35, True), self.torch.get_num_threads()
        self.torch.set_num_threads(1)  # a loader worker's one thread
        try:
            self.torch.manual_seed(0)
            clocks = start()
            for index in range(images):
                crop(decode_jpeg(self.files[index % len(self.files)]))
            return stop(clocks, images)
        finally:
            self.torch.set_num_threads(threads)

    def ops(self, size: int, steps: int) -> dict[str, float]:
        """Milliseconds of self CPU time per training step, by operator (torch.profiler)."""
        from torch.profiler import ProfilerActivity, profile

        from imgcls.engine.loop import train_one_epoch

        loss, batch = self.torch.nn.CrossEntropyLoss(), self.batch(size)
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            train_one_epoch(
                self.model, [batch] * steps, loss, self.optimizer, self.scheduler, self.cpu, log_every=10**9,
                memory_format=self.layout,
            )  # fmt: skip
        averages = trace.key_averages()
        return {e.key: e.self_cpu_time_total / 1000 / steps for e in averages if e.self_cpu_time_total}


def jpegs() -> list:
    """16 different crops of a photo, each resized to 256 px and saved as JPEG q95 (prepare's format)."""
    import torch
    from PIL import Image

    photo = Image.open(ROOT / "benchmarks" / "photos" / "grace_hopper.jpg").convert("RGB")
    files = []
    for index in range(16):
        buffer = io.BytesIO()
        photo.crop((index * 8, index * 6, index * 8 + 380, index * 6 + 480)).resize((256, 323)).save(
            buffer, "JPEG", quality=95
        )
        files.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    return files


def start() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def stop(clocks: tuple[float, float], images: int) -> dict:
    """Per 1,000 images: wall seconds and CPU seconds (all threads of this process)."""
    wall, cpu = time.perf_counter() - clocks[0], time.process_time() - clocks[1]
    return {"wall": wall / images * 1000, "cpu": cpu / images * 1000}


def serve(name: str, threads: int) -> None:
    """A worker: one JSON request a line on stdin ({"task": ..., "args": [...]}), one JSON answer a line."""
    work = Work(name, threads)
    print(json.dumps({"kernels": work.torch.backends.cpu.get_cpu_capability()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(getattr(work, request["task"])(*request["args"])), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--steps", type=int, default=3, help="timed batches of 32 per training figure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--profile", type=int, default=224, help="op by op at this size (0: off)")
    parser.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, args.threads)
        return
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stages run (stages/__init__.py); idle workers sleep
    tasks = {f"train {s} px": ("train", [s, args.steps]) for s in args.sizes}
    tasks |= {f"features {s} px": ("features", [s, 2 * args.steps]) for s in args.sizes}
    tasks["loader, per core"] = ("loader", [400])
    with contextlib.ExitStack() as stack:
        workers = {name: stack.enter_context(worker(name, args.threads, env)) for name in args.runtimes}
        kernels = {name: ask(process, None) for name, process in workers.items()}
        rounds = []
        for number in range(args.rounds):
            order = (
                args.runtimes[number % len(args.runtimes) :] + args.runtimes[: number % len(args.runtimes)]
            )
            found = {key: {name: ask(workers[name], task) for name in order} for key, task in tasks.items()}
            rounds.append(found)
            print(f"round {number + 1}: {json.dumps(found)}", flush=True)
        profiles = {}
        if args.profile and {"unpinned", "pinned"} <= set(workers):
            profiles = {
                n: ask(workers[n], ("ops", [args.profile, args.steps])) for n in ("unpinned", "pinned")
            }
    print_table(rounds, kernels, args)
    if profiles:
        print_ops(profiles, args.profile)


@contextlib.contextmanager
def worker(name: str, threads: int, env: dict):
    command = [sys.executable, __file__, "--worker", name, "--threads", str(threads)]
    process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def ask(process: subprocess.Popen, task: tuple | None):
    if task is not None:
        process.stdin.write(json.dumps({"task": task[0], "args": task[1]}) + "\n")
        process.stdin.flush()
    answer = process.stdout.readline()
    if not answer:
        sys.exit(f"a worker ended early (exit {process.wait(timeout=60)})")
    return json.loads(answer)


def print_table(rounds: list[dict], kernels: dict, args) -> None:
    from imgcls.engine.runtime import cpu_isa, cpu_model

    names = args.runtimes
    machine = f"{cpu_model()} ({cpu_isa()}), {os.cpu_count()} cores"
    print(
        f"\n{machine}, {args.threads} threads, {len(rounds)} rounds, each task alternating between runtimes"
    )
    print("kernels: " + ", ".join(f"{n} {kernels[n]['kernels']}" for n in names))
    print("seconds per 1,000 images, medians (the loader on one core)")
    print("ratio to unpinned, wall | cpu: the median of the rounds' ratios [lowest-highest]")
    print(
        f"{'':18}"
        + "".join(f"{n:>18}" for n in names)
        + "   "
        + "   ".join(f"{n} wall | cpu" for n in names[1:])
    )
    for key in rounds[0]:
        cells = ""
        for name in names:
            wall, cpu = (statistics.median(r[key][name][clock] for r in rounds) for clock in ("wall", "cpu"))
            cells += f"{wall:8.1f} s|{cpu:6.1f} s"
        ratios = []
        for name in names[1:]:
            parts = []
            for clock in ("wall", "cpu"):
                each = sorted(r[key][name][clock] / r[key]["unpinned"][clock] for r in rounds)
                parts.append(f"{statistics.median(each):.2f}x [{each[0]:.2f}-{each[-1]:.2f}]")
            ratios.append(" | ".join(parts))
        print(f"{key:18}{cells}   " + "   ".join(ratios))


def print_ops(profiles: dict, size: int) -> None:
    """Where the pinned runtime's extra time goes: operators by the time they add over the unpinned one."""
    fast, slow = profiles["unpinned"], profiles["pinned"]
    print(f"\nA training step at {size} px, by operator (ms of self CPU time per step, all threads summed):")
    print(f"{'operator':44}{'unpinned':>10}{'pinned':>10}{'ratio':>8}{'adds':>9}")
    for name in sorted(set(fast) | set(slow), key=lambda n: fast.get(n, 0) - slow.get(n, 0))[:14]:
        a, b = fast.get(name, 0.0), slow.get(name, 0.0)
        print(f"{name[:43]:44}{a:10.1f}{b:10.1f}{b / a if a else float('inf'):7.2f}x{b - a:+9.1f}")
    total_fast, total_slow = sum(fast.values()), sum(slow.values())
    ratio, adds = total_slow / total_fast, total_slow - total_fast
    print(f"{'all':44}{total_fast:10.1f}{total_slow:10.1f}{ratio:7.2f}x{adds:+9.1f}")


if __name__ == "__main__":
    main()
