"""The pinned runtime gives the same bits on other processors, for real: the pipeline's float work
(tests/engine/cross_cpu_work.py: prepare's decode and encode, the loader's crops, training steps, evaluation's
figures, the .pt2 program and the export's parity) natively and under qemu's emulated Intel Haswell and AMD
EPYC-Rome, which have AVX2 but no AVX-512 and other vendors and cache sizes than any machine of ours. The
Haswell trains every architecture in the table; the EPYC-Rome one of each block type (resnet34, 101 and 152
run the kernels of resnet18 and resnet50 on the same shapes, more times): a minute of CPU less. Unpinned,
the same work gives other bits on the Haswell than here, so the comparison can fail; and a processor without
AVX2 (Sandy Bridge) is refused in one line. ONNX Runtime has no pin: its logits follow the CPU, and only its
parity gate is compared."""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imgcls.config.params import flatten
from imgcls.engine.runtime import PINNED_ENV
from imgcls.model.architectures import ARCHITECTURES
from tests.helpers import ROOT, attempt, clean_env

WORK = ROOT / "tests" / "engine" / "cross_cpu_work.py"
EMULATED = ("Haswell", "EPYC-Rome")  # Intel and AMD, AVX2 without AVX-512, their own cache sizes
TOO_OLD = "SandyBridge"  # AVX without AVX2 or FMA
EVERY_ARCH = ",".join(ARCHITECTURES)
BLOCK_TYPES = "resnet18,resnet50,efficientnet_b0,convnext_tiny,mobilenet_v3_small"  # each kind of layer once
UNPINNED_WORK = ["--archs", "resnet18", "--parts", "prepare,loader,train"]
LIMIT = 1200  # seconds per process: an emulated one runs under 3 minutes alone on 2 cores


def work(out: Path, mode: str, cpu: str | None, *options: str) -> dict | str:
    """Run the work in a fresh process (under qemu when `cpu` names a model): its JSON, or its error line."""
    qemu = ["qemu-x86_64", "-cpu", cpu] if cpu else []
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in clean_env().items() if k not in PINNED_ENV}  # nothing pinned from outside
    result = attempt([*qemu, sys.executable, str(WORK), mode, str(out), *options], ROOT, env, LIMIT)
    if result.returncode == 3:
        return result.stderr.strip().splitlines()[-1]
    assert result.returncode == 0, f"{cpu or 'native'} {mode} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_everywhere(runs: dict[str, dict], key: str) -> bool:
    """Every run that made `key` found the same (the EPYC-Rome trains fewer architectures)."""
    return len({json.dumps(found[key], sort_keys=True) for found in runs.values() if key in found}) == 1


@pytest.mark.slow
def test_pinned_work_is_the_same_bits_on_other_cpus_and_unpinned_work_is_not(tmp_path):
    if not shutil.which("qemu-x86_64"):
        pytest.fail("qemu-x86_64 not found: tests/install_services.sh installs Debian's qemu-user")
    every_part = "prepare,loader,train,evaluate,write_export,export"
    native = work(tmp_path / "native", "pinned", None, "--archs", EVERY_ARCH, "--parts", every_part)
    for cpu in EMULATED:  # the export's files, made here, are the parity check's inputs there
        (tmp_path / cpu).mkdir()
        for name in ("model.pt2", "model.onnx"):
            shutil.copy(tmp_path / "native" / name, tmp_path / cpu / name)
    emulated = ("--parts", every_part.replace("write_export", "write_program"))
    jobs = {  # (out folder, mode, cpu, options...), all at once: each mostly waits on one emulated core
        "Haswell": (tmp_path / "Haswell", "pinned", "Haswell", "--archs", EVERY_ARCH, *emulated),
        "EPYC-Rome": (tmp_path / "EPYC-Rome", "pinned", "EPYC-Rome", "--archs", BLOCK_TYPES, *emulated),
        "Haswell unpinned": (tmp_path / "Haswell-unpinned", "unpinned", "Haswell", *UNPINNED_WORK),
        "native unpinned": (tmp_path / "native-unpinned", "unpinned", None, *UNPINNED_WORK),
        TOO_OLD: (tmp_path / TOO_OLD, "pinned", TOO_OLD, "--parts", "prepare"),
    }  # fmt: skip
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(work, *job) for name, job in jobs.items()}
        found = {name: future.result() for name, future in futures.items()}

    pinned = {"native": native, **{cpu: found[cpu] for cpu in EMULATED}}
    unpinned = {name: found[f"{name} unpinned"] for name in ("native", "Haswell")}
    print(report(pinned, unpinned, found[TOO_OLD]))
    apart = ("seconds", "parity", "files")  # compared below, or not at all (seconds)
    made = {cpu: [key for key in run if key not in apart] for cpu, run in pinned.items()}
    every_step = [f"step.{arch}" for arch in ARCHITECTURES]
    one_each = [f"step.{arch}" for arch in BLOCK_TYPES.split(",")]
    assert made == {  # every part on every CPU; the EPYC-Rome trains one architecture of each block type
        "native": ["cpu", "prepared", "loader", *every_step, "evaluation"],
        "Haswell": ["cpu", "prepared", "loader", *every_step, "evaluation"],
        "EPYC-Rome": ["cpu", "prepared", "loader", *one_each, "evaluation"],
    }
    assert [key for key in made["native"] if not same_everywhere(pinned, key)] == []
    # the .pt2 program made on each CPU (its folded BatchNorm is computed): the same bytes
    assert len({run["files"]["model.pt2"] for run in pinned.values()}) == 1
    assert native["cpu"] == {
        "pinned": True, "kernel_isa": "AVX2", "onednn_isa": "Intel AVX2", "blas": "MKL COMPATIBLE",
        "threads": 2,
    }  # fmt: skip
    for cpu, run in pinned.items():  # .pt2 runs on the pinned kernels; ONNX Runtime picks its own per CPU
        assert run["parity"]["torch"] == native["parity"]["torch"], cpu
        assert run["parity"]["onnx"]["top1_agreement"] == 1.0 and run["parity"]["onnx"]["max_abs_diff"] < 1e-4
    assert not same_everywhere(unpinned, "step.resnet18"), "unpinned training gave the same bits everywhere"
    refused = found[TOO_OLD]
    assert isinstance(refused, str) and refused.startswith("RuntimeNotPinned: runtime.reproducible is true")
    assert "need AVX2 and FMA" in refused and "Set runtime.reproducible: false to run here" in refused


def report(pinned: dict[str, dict], unpinned: dict[str, dict], refused: str) -> str:
    """What ran where and what came out: a line per result, a column per CPU (hashes cut to 16 digits)."""
    lines = []
    for title, runs in (("pinned", pinned), ("unpinned", unpinned)):
        table = {cpu: flatten({k: v for k, v in run.items() if k != "seconds"}) for cpu, run in runs.items()}
        lines.append(f"{title:34}" + "".join(f"{cpu:>20}" for cpu in runs))
        for key in table["native"]:
            cells = [str(table[cpu].get(key, "-"))[:19] for cpu in runs]
            mark = "" if len(set(cells) - {"-"}) == 1 else "   <- differs"  # -: not made there
            lines.append(f"  {key:32.32}" + "".join(f"{cell:>20}" for cell in cells) + mark)
        lines.append(
            "  seconds (emulated: about 20x slower)"
            + "".join(f"{sum(run['seconds'].values()):>18.0f} s" for run in runs.values())
        )
    lines.append(f"{TOO_OLD}: {refused}")
    return "\n".join(lines)
