"""The pinned CPU runtime: what it sets and records, that settings from outside cannot move it, and that it
refuses to pin too late. Its bits on other processors: tests/engine/test_cross_cpu.py."""

from __future__ import annotations

import json
import sys

import torch

from imgcls.data.datasets import image_folder
from imgcls.data.loaders import make_loader
from imgcls.data.transforms import train_transform
from tests.helpers import ROOT, attempt, clean_env

TINY_TRAINING = """
import hashlib, json, sys, torch
from imgcls.engine import fingerprint, runtime
from imgcls.engine.recipe import make_optimizer
from imgcls.model.networks import build_model
runtime.pin(sys.argv[1] == "pinned", 2, torch.device("cpu"))
torch.manual_seed(0)
model = build_model("resnet18", 3).to(memory_format=torch.channels_last)
optimizer = make_optimizer(model, "adamw", 1e-3, 0.05, 0.9)
images = torch.randn(16, 3, 24, 24).to(memory_format=torch.channels_last)
targets = torch.arange(16) % 3
for _ in range(2):
    loss = torch.nn.functional.cross_entropy(model(images), targets)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
digest = hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in model.state_dict().values()))
print(json.dumps({"sha": digest.hexdigest(), "env": fingerprint.fingerprint(torch.device("cpu"), True)}))
"""
# What a user's shell might hold: each library told to use other kernels than the pinned ones
OTHER_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "AVX",
    "MKL_CBWR": "AUTO",
    "MKL_ENABLE_INSTRUCTIONS": "AVX",
    "OMP_NUM_THREADS": "1",
}


def train_tiny(mode: str, caps: dict) -> dict:
    result = attempt([sys.executable, "-c", TINY_TRAINING, mode], cwd=ROOT, env=clean_env() | caps)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_pins_hold_against_settings_from_outside_and_are_recorded():
    plain, told = train_tiny("pinned", {}), train_tiny("pinned", OTHER_KERNELS)
    assert plain["sha"] == told["sha"]
    for found in (plain["env"], told["env"]):
        assert found["pinned"] and found["kernel_isa"] == "AVX2" and found["onednn_isa"] == "Intel AVX2"
        assert found["blas"] == "MKL COMPATIBLE" and not found["nnpack"] and found["threads"] == 2
        assert found["pins"] == {
            "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_CBWR": "COMPATIBLE",
            "MKL_DYNAMIC": "FALSE",
            "OMP_DYNAMIC": "FALSE",
            "OMP_NUM_THREADS": "2",
            "MKL_NUM_THREADS": "2",
        }
    unpinned = train_tiny("unpinned", {})
    assert not unpinned["env"]["pinned"] and unpinned["env"]["onednn_isa"].startswith("Intel")


def test_pinning_after_tensor_work_is_refused():
    script = (
        "import torch; torch.ones(3) @ torch.ones(3); torch.randn(8, 8) @ torch.randn(8, 8)\n"
        "from imgcls.engine import runtime\nruntime.pin(True, 2, torch.device('cpu'))"
    )
    result = attempt([sys.executable, "-c", script], cwd=ROOT, env=clean_env())
    assert result.returncode != 0 and "RuntimeNotPinned" in result.stderr
    assert "tensors were used before the runtime was pinned" in result.stderr


def test_worker_count_does_not_change_augmentation(tiny_folder):
    dataset = image_folder(str(tiny_folder), train_transform(12, 0.5, True))

    def epoch_batches(workers: int, epoch: int) -> list[torch.Tensor]:
        loader = make_loader(dataset, 8, True, workers, seed=3)
        loader.sampler.set_epoch(epoch)
        return [images for images, _ in loader]

    serial, parallel = epoch_batches(0, 1), epoch_batches(2, 1)
    # 36 images: 4 full batches
    assert len(serial) == 4 and all(torch.equal(a, b) for a, b in zip(serial, parallel))
    # a new epoch: new order and crops
    assert not torch.equal(torch.cat(serial), torch.cat(epoch_batches(0, 2)))
