"""What OpenMP's waiting policy costs torch when processes share the cores: the same ResNet-18 training steps
in one process alone and in two at once, each with `--threads` intra-op threads, under the default policy
(busy-waiting threads) and OMP_WAIT_POLICY=PASSIVE. Two pytest workers, or `dvc queue start -j 2`, are the
two-at-once case. Prints seconds per run; asserts nothing. The policy never changes a result, only the wait.

Usage: python benchmarks/omp_wait.py [--threads 2] [--steps 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

STEPS = """
import sys, torch, torchvision
torch.manual_seed(0)
torch.set_num_threads({threads})
model = torchvision.models.resnet18(num_classes=4)
optimizer = torch.optim.SGD(model.parameters(), 0.01)
x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 4, (32,))
for _ in range({steps}):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
"""


def timed(code: str, policy: str | None, together: int) -> float:
    """Seconds until `together` copies of the code, started at once, have all ended."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(together)]
    for process in processes:
        if process.wait(timeout=600):
            raise SystemExit(f"the training steps failed (exit {process.returncode})")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    code = STEPS.format(threads=args.threads, steps=args.steps)
    print(f"{os.cpu_count()} cores; {args.steps} ResNet-18 steps a process, {args.threads} threads each")
    for together in (1, 2):
        for policy in (None, "PASSIVE"):
            seconds = timed(code, policy, together)
            print(f"  {together} at once, OMP_WAIT_POLICY={policy or 'default (busy)':<15} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
