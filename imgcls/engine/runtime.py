"""How torch runs in a stage process: the pinned (reproducible) runtime, set up before any tensor work.

Float results on the CPU depend on which kernels run, and each library picks them per processor:
- ATen's vectorised kernels by CPU capability (DEFAULT/AVX2/AVX512: the vector width changes reduction order);
- oneDNN's convolutions by ISA (AVX2, AVX-512...);
- MKL's GEMM and vector math by code branch and vendor (on AMD processors MKL honours only COMPATIBLE);
- NNPACK's inference convolutions (AVX2 only, or none);
- every parallel reduction by the intra-op thread count.
The pinned runtime fixes each: ATen's AVX2 kernels, oneDNN capped at AVX2, MKL's COMPATIBLE branch, no NNPACK,
a fixed thread count. Every x86-64 processor since 2013 (Intel Haswell, AMD Zen and later) runs these, at
close to full speed; tests/engine/test_cross_cpu.py proves the same bits under emulated Intel and AMD CPUs
with other cache sizes. One thing cannot be pinned: MKL's vector math (torch.sqrt, exp, log... on float
tensors) gives other bits on Intel than on AMD under every MKL setting, so the pipeline's pinned paths keep
off it (AdamW runs its fused kernel, which computes with ATen's own vectors).
ATen, oneDNN and MKL read their settings when their first kernel runs, not at import, so `pin` must run before
any tensor work; it proves each setting took effect and fails otherwise."""

from __future__ import annotations

import ctypes
import os
import platform
import tempfile
from functools import cache
from pathlib import Path

import torch

PINNED_KERNELS = "AVX2"  # ATen's AVX2+FMA kernels: every x86-64 CPU since Haswell (2013) and Zen (2017)
PINNED_ONEDNN = "Intel AVX2"  # what oneDNN reports when capped at AVX2 (its convolutions' ISA)
PINNED_BLAS = "COMPATIBLE"  # MKL's one branch that gives the same bits on Intel and AMD
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": PINNED_KERNELS.lower(),
    "ONEDNN_MAX_CPU_ISA": "AVX2",
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
    """Reproducible mode was asked for but a library had already chosen its kernels, or the CPU cannot run
    the pinned ones."""


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
        _check_cpu()  # first: ATen obeys ATEN_CPU_CAPABILITY=avx2 even where AVX2 is missing (SIGILL)
        os.environ.update(PINNED_ENV, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads:
        torch.set_num_threads(threads)
    if reproducible:
        torch.backends.nnpack.set_flags(False)
        _check_pinned()
    if device.type == "cuda":
        if reproducible:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
            # ops without one warn, naming themselves
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = reproducible
        torch.backends.cudnn.benchmark = not reproducible  # autotuned kernels: faster, not repeatable


def nondeterministic_ops(caught: list) -> list[str]:
    """The ops PyTorch reported as lacking a deterministic implementation, from recorded warnings."""
    return sorted(
        {
            str(w.message).split(" does not have a deterministic")[0]
            for w in caught
            if "does not have a deterministic implementation" in str(w.message)
        }
    )


def _check_cpu() -> None:
    """Refuse, in one line, a CPU that cannot run the pinned kernels, before any of them runs."""
    missing = [feature for feature in ("AVX2", "FMA3") if not cpu_features().get(feature)]
    if missing:
        raise RuntimeNotPinned(
            f"runtime.reproducible is true, and its pinned kernels need AVX2 and FMA, which this CPU "
            f"({cpu_model()}) lacks ({', '.join(missing)} missing; CPUs since 2013 have them: Intel Haswell, "
            "AMD Zen). Set runtime.reproducible: false to run here; its results then match other machines "
            "within the test set's intervals, not bit for bit"
        )


def cpu_features() -> dict[str, bool]:
    """The processor's features as its CPUID instruction reports them (numpy reads them for its own dispatch;
    /proc/cpuinfo would show an emulator's host instead), or from /proc/cpuinfo where numpy has no table."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x kept it in numpy.core
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            flags = cpu_flags()
            return {"AVX2": "avx2" in flags, "FMA3": "fma" in flags}
    return dict(__cpu_features__)


def _check_pinned() -> None:
    blas = blas_branch()  # runs a first kernel: ATen and MKL read their settings now
    kernels = torch.backends.cpu.get_cpu_capability()
    convolutions = onednn_isa()
    if kernels != PINNED_KERNELS or blas not in (PINNED_BLAS, "not MKL") or convolutions != PINNED_ONEDNN:
        raise RuntimeNotPinned(
            f"runtime.reproducible is true but torch already runs {kernels} kernels, oneDNN {convolutions} "
            f"and MKL branch {blas} (wanted {PINNED_KERNELS}, {PINNED_ONEDNN} and {PINNED_BLAS}): tensors "
            "were used before the runtime was pinned. Run the stage as `python -m stages.<name>` (or set "
            "runtime.reproducible: false)"
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


@cache
def onednn_isa() -> str:
    """The ISA oneDNN's convolutions run ("Intel AVX2"), read from the header oneDNN prints when its verbose
    mode first runs a primitive (torch exposes no getter); "off" when torch runs without oneDNN."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return "off"
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as sink:
        libc.fflush(None)
        saved = os.dup(1)
        os.dup2(sink.fileno(), 1)  # oneDNN prints with C's stdio, to file descriptor 1
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                # batch 2, 3x3: a convolution torch hands to oneDNN
                torch.nn.functional.conv2d(torch.ones(2, 8, 4, 4), torch.ones(8, 8, 3, 3))
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        printed = sink.read().decode(errors="replace")
    found = [line.split("isa:", 1)[1].strip() for line in printed.splitlines() if ",cpu,isa:" in line]
    return found[0] if found else "unknown (oneDNN printed no header: ONEDNN_VERBOSE set before?)"


def nnpack_enabled() -> bool:
    """NNPACK serves CPU inference convolutions when built in and not switched off (no public getter)."""
    return torch.backends.nnpack.is_available() and torch._C._get_nnpack_enabled()


def is_pinned(device: torch.device) -> bool:
    """True when this process runs the pinned CPU kernels (the ones every processor shares)."""
    return (
        device.type == "cpu"
        and torch.backends.cpu.get_cpu_capability() == PINNED_KERNELS
        and blas_branch() == PINNED_BLAS
        and onednn_isa() == PINNED_ONEDNN
        and not nnpack_enabled()
    )


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_isa() -> str:
    """The highest vector ISA the processor offers (what unpinned kernels would use)."""
    flags = cpu_flags()
    return next((name for flag, name in CPU_LEVELS if flag in flags), platform.machine())
