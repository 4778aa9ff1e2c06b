"""The pinned CPU runtime: what it sets, that it refuses to pin too late, and that training under it gives
the same bits whatever vector instructions each library is allowed (an older or newer CPU)."""

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
from imgcls.engine import runtime
from imgcls.model.networks import build_model
runtime.pin(sys.argv[1] == "pinned", 2, torch.device("cpu"))
torch.manual_seed(0)
model = build_model("resnet18", 3).to(memory_format=torch.channels_last)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
images = torch.randn(16, 3, 24, 24).to(memory_format=torch.channels_last)
targets = torch.arange(16) % 3
for _ in range(2):
    loss = torch.nn.functional.cross_entropy(model(images), targets)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
digest = hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in model.state_dict().values()))
print(json.dumps({"sha": digest.hexdigest(), "env": runtime.fingerprint(torch.device("cpu"), True)}))
"""
OLDER_CPU = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "AVX",
    "MKL_ENABLE_INSTRUCTIONS": "AVX",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F",
}


def train_tiny(mode: str, caps: dict) -> dict:
    result = attempt([sys.executable, "-c", TINY_TRAINING, mode], cwd=ROOT, env=clean_env() | caps)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_pinned_training_is_the_same_bits_under_other_isa_caps():
    native, older = train_tiny("pinned", {}), train_tiny("pinned", OLDER_CPU)
    assert native["sha"] == older["sha"]
    for found in (native["env"], older["env"]):
        assert found["pinned"] and found["kernel_isa"] == "DEFAULT" and found["blas"] == "MKL COMPATIBLE"
        assert not found["onednn"] and not found["nnpack"] and found["threads"] == 2


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
