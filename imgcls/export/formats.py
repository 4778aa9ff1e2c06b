"""The exported model's two runtimes: a torch.export program (.pt2) and ONNX (run by ONNX Runtime).
Exporting, loading and running them; torch, numpy and onnxruntime only."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from imgcls.export.program_safety import check_program
from imgcls.files import sha256_file, write_bytes, write_serialized

RUNTIMES = ("onnx", "torch")
PROGRAM_FILE, ONNX_FILE, CARD_FILE = "model.pt2", "model.onnx", "model_card.json"
CALIBRATION_FILE = "calibration.json"  # {"temperature": T, ...}: probabilities are softmax(logits / T)
EXPORT_FILES = (
    ONNX_FILE,
    PROGRAM_FILE,
    "labels.json",
    "preprocessing.json",
    CALIBRATION_FILE,
)  # hashed in the card


class ExportTampered(RuntimeError):
    """An exported file does not match the hash its model card records: it is not loaded."""


def verify_export(folder: Path) -> dict:
    """Check every exported file against the SHA-256 in `model_card.json` before anything is loaded;
    returns the card. The card itself is the anchor: `python -m imgcls lineage` checks it against MLflow."""
    card_path = folder / CARD_FILE
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        recorded = card["model"]["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ExportTampered(
            f"{card_path} is missing or not a model card ({type(error).__name__}); the export "
            "cannot be verified, so it is not loaded. Re-export with `dvc repro export`"
        ) from None
    for name in EXPORT_FILES:
        path = folder / name
        if name not in recorded:
            raise ExportTampered(f"{card_path} records no hash for {name}; re-export with `dvc repro export`")
        found = sha256_file(path) if path.is_file() else "missing"
        if found != recorded[name]:
            raise ExportTampered(
                f"{path} does not match its model card (sha256 {found[:16]}…, card "
                f"{recorded[name][:16]}…): refusing to load a file that was changed or swapped"
            )
    return card


def export_program(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """A torch.export program with a dynamic batch dimension (torch.jit.trace is deprecated), BatchNorm folded
    into the convolutions as ONNX Runtime does: fewer kernels per image, within 1e-6 of the eager model (the
    export stage's parity gate checks it on every test image)."""
    from torch.fx.experimental.optimization import fuse

    program = torch.export.export(
        fuse(model.eval()), (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    for (
        node
    ) in program.graph.nodes:  # provenance names Python object ids and this machine's paths: other bytes
        node.meta.pop("from_node", None)  # on every run and in every checkout
        node.meta.pop("stack_trace", None)
    write_serialized(path, lambda buffer: torch.export.save(program, buffer))


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """ONNX via the dynamo exporter, dynamic batch; input `images` (N,3,H,W float32), output `logits`."""
    program = torch.onnx.export(
        model,
        (example,),
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        input_names=["images"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=True,
    )
    write_bytes(path, program.model_proto.SerializeToString())


def load_runtime(export_dir: Path, runtime: str, device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """A function from a float32 NCHW batch to float32 logits, backed by `runtime`."""
    if runtime == "onnx":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(export_dir / ONNX_FILE), providers=providers)
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
    if runtime == "torch":
        check_program(export_dir / PROGRAM_FILE)  # torch.export.load can run code from a crafted archive
        program = torch.export.load(export_dir / PROGRAM_FILE).module().to(device)

        @torch.no_grad()
        def run(batch: np.ndarray) -> np.ndarray:  # channels_last: measured 1.2-1.3x faster on the CPU
            images = torch.from_numpy(np.asarray(batch, dtype=np.float32)).to(device)
            return program(images.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()

        return run
    raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def read_temperature(export_dir: Path) -> float:
    """The temperature the evaluate stage fitted on val (1.0 when temperature scaling was off)."""
    temperature = json.loads((export_dir / CALIBRATION_FILE).read_text())["temperature"]
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(
            f"{export_dir / CALIBRATION_FILE}: temperature must be a positive number, got {temperature!r}"
        )
    return float(temperature)


def class_probabilities(logits: np.ndarray, temperature: float) -> torch.Tensor:
    """Calibrated class probabilities from the exported logits: softmax(logits / T)."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)) / temperature, dim=1)


def compare(expected: np.ndarray, actual: np.ndarray, atol: float) -> dict:
    """Parity figures of `actual` logits against `expected`."""
    return {
        "images": int(len(expected)),
        "max_abs_diff": float(np.abs(expected - actual).max()),
        "top1_agreement": float((expected.argmax(1) == actual.argmax(1)).mean()),
        "atol": atol,
    }
