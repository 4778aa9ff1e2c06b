"""How torch runs in a stage process: the pinned (reproducible) runtime and the fingerprint each run records.

Float results on the CPU depend on which kernels run, and those are picked per processor:
- ATen's vectorised kernels by CPU capability (DEFAULT/AVX2/AVX512; the vector width changes reduction order);
- oneDNN's convolutions by ISA *and* by cache sizes (blocking changes the accumulation order);
- MKL's GEMM by code branch (on AMD processors MKL honours only its COMPATIBLE branch);
- NNPACK's inference convolutions (AVX2 only, or none);
- every parallel reduction by the intra-op thread count.
Reproducible mode pins all five: ATen's baseline kernels, MKL's COMPATIBLE branch with a fixed thread count,
no oneDNN, no NNPACK. The same bits then come out of any x86-64 processor. ATen reads ATEN_CPU_CAPABILITY and
MKL reads MKL_CBWR when their first kernel runs, not at import, so `pin` must run before any tensor work;
it proves both took effect and fails otherwise.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings
from functools import cache
from pathlib import Path

import torch

PINNED_KERNELS = "DEFAULT"  # ATen's baseline x86-64 kernels: the same machine code on every processor
PINNED_BLAS = "COMPATIBLE"  # MKL's SSE2 branch: the one branch MKL keeps on Intel and AMD alike
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": PINNED_KERNELS.lower(),
    "MKL_CBWR": PINNED_BLAS,
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}  # MKL/OpenMP must not pick thread counts per call
# mkl_cbwr_get() codes (mkl_service.h)
MKL_BRANCHES = {
    0: "OFF",
    1: "OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
    13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}
CPU_LEVELS = (("avx512f", "AVX512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"))


class RuntimeNotPinned(RuntimeError):
    """Reproducible mode was asked for but a library had already chosen its kernels."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for `cuda` without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "runtime.device=cuda but torch sees no CUDA device; set runtime.device: auto or cpu"
        )
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of images and conv weights while training and evaluating (checkpoints are always NCHW)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def pin(reproducible: bool, threads: int, device: torch.device) -> None:
    """Set up torch for this process: call first, before any tensor work (stage_main does)."""
    if reproducible:
        os.environ.update(PINNED_ENV, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads:
        torch.set_num_threads(threads)
    if reproducible:
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
        _check_pinned()
    if device.type == "cuda":
        if reproducible:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
            # ops without one warn, naming themselves
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = reproducible
        torch.backends.cudnn.benchmark = not reproducible  # autotuned kernels: faster, not repeatable


def nondeterministic_ops(caught: list[warnings.WarningMessage]) -> list[str]:
    """The ops PyTorch reported as lacking a deterministic implementation, from recorded warnings."""
    return sorted(
        {
            str(w.message).split(" does not have a deterministic")[0]
            for w in caught
            if "does not have a deterministic implementation" in str(w.message)
        }
    )


def _check_pinned() -> None:
    blas = blas_branch()  # runs a first kernel: ATen and MKL read their settings now
    kernels = torch.backends.cpu.get_cpu_capability()
    if kernels != PINNED_KERNELS or blas not in (PINNED_BLAS, "not MKL"):
        raise RuntimeNotPinned(
            f"runtime.reproducible is true but torch already runs {kernels} kernels with MKL branch {blas} "
            f"(wanted {PINNED_KERNELS} and {PINNED_BLAS}): tensors were used before the runtime was pinned. "
            "Run the stage as `python -m stages.<name>` (or set runtime.reproducible: false)"
        )


@cache
def _mkl():
    """libtorch_cpu's MKL service functions, or None where torch is not built with MKL."""
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        mkl = ctypes.CDLL(str(library))
        return mkl if hasattr(mkl, "mkl_serv_cbwr_get") else None
    except OSError:
        return None


def blas_branch() -> str:
    """MKL's code branch for this process ("AUTO" on AMD for any branch but COMPATIBLE), or "not MKL"."""
    mkl = _mkl()
    if mkl is None:
        return "not MKL"
    torch.ones(2, 2) @ torch.ones(2, 2)  # MKL must have started: asked first, it aborts the process
    return MKL_BRANCHES.get(mkl.mkl_serv_cbwr_get(1), "unknown")


def nnpack_enabled() -> bool:
    """NNPACK serves CPU inference convolutions when built in and not switched off (no public getter)."""
    return torch.backends.nnpack.is_available() and torch._C._get_nnpack_enabled()


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The highest vector ISA the processor offers (what unpinned kernels would use)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return next((name for flag, name in CPU_LEVELS if flag in flags), platform.machine())


def is_pinned(device: torch.device) -> bool:
    """True when this process runs the pinned CPU kernels (the ones every processor shares)."""
    return (
        device.type == "cpu"
        and torch.backends.cpu.get_cpu_capability() == PINNED_KERNELS
        and blas_branch() == PINNED_BLAS
        and not torch.backends.mkldnn.enabled
        and not nnpack_enabled()
    )


def fingerprint(device: torch.device, reproducible: bool) -> dict:
    """What a reproduction must match: processor, kernels really used, threads, library and GPU versions."""
    import PIL.features
    import torchvision

    cuda = device.type == "cuda"
    return {
        "reproducible": reproducible,
        "pinned": is_pinned(device),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "kernel_isa": torch.backends.cpu.get_cpu_capability(),
        "blas": f"MKL {blas_branch()}" if _mkl() else "not MKL",
        "onednn": torch.backends.mkldnn.enabled,
        "nnpack": nnpack_enabled(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
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


# The fingerprint fields that decide whether two pinned runs must agree bit for bit.
IDENTITY = ("pinned", "device", "kernel_isa", "blas", "threads", "torch", "torchvision", "machine")


def same_bits_expected(old: dict, new: dict) -> tuple[bool, list[str]]:
    """(exact comparison applies, the identity fields that differ)."""
    differ = [key for key in IDENTITY if old.get(key) != new.get(key)]
    return bool(old.get("pinned")) and bool(new.get("pinned")) and not differ, differ
