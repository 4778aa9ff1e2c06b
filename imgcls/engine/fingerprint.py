"""The machine fingerprint every stage records: the processor, the kernels and pins really in effect, threads,
library and GPU versions; and which of its fields decide whether two runs must agree bit for bit."""

from __future__ import annotations

import os
import platform

import torch

from imgcls.engine import runtime

# The fingerprint fields that decide whether two pinned runs must agree bit for bit. The processor itself
# (model, vendor, caches, core count) is not one: the pinned kernels give the same bits on every one.
IDENTITY = (
    "pinned",
    "device",
    "kernel_isa",
    "onednn_isa",
    "blas",
    "threads",
    "torch",
    "torchvision",
    "machine",
)


def fingerprint(device: torch.device, reproducible: bool) -> dict:
    """What a reproduction must match: processor, kernels really used, every pin, threads, library and GPU
    versions."""
    import numpy
    import PIL.features
    import torchvision

    cuda = device.type == "cuda"
    pins = (*runtime.PINNED_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return {
        "reproducible": reproducible,
        "pinned": runtime.is_pinned(device),
        "device": str(device),
        "cpu": runtime.cpu_model(),
        "cpu_isa": runtime.cpu_isa(),
        "kernel_isa": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": runtime.onednn_isa(),
        "blas": f"MKL {runtime.blas_branch()}" if runtime._mkl() else "not MKL",
        "nnpack": runtime.nnpack_enabled(),
        "threads": torch.get_num_threads(),
        "pins": {name: os.environ.get(name) for name in pins},  # as this process set them
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # how idle threads wait; never the bits
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "machine": platform.machine(),
        "pillow": PIL.__version__,  # prepare decodes inputs with PIL; JPEGs with libjpeg-turbo (DCT-scaled)
        "libjpeg_turbo": PIL.features.version("libjpeg_turbo"),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }


def write_fingerprint(stage: str, device: torch.device, reproducible: bool) -> dict:
    """This process's fingerprint, written to metrics/environment/<stage>.json (beside the metrics)."""
    from imgcls.config import layout
    from imgcls.files import write_json

    found = fingerprint(device, reproducible)
    write_json(layout.fingerprint(stage), found)
    return found


def same_bits_expected(old: dict, new: dict) -> tuple[bool, list[str]]:
    """(exact comparison applies, the identity fields that differ)."""
    differ = [key for key in IDENTITY if old.get(key) != new.get(key)]
    return bool(old.get("pinned")) and bool(new.get("pinned")) and not differ, differ
