"""The exported model's two runtimes: a torch.export program (.pt2) and ONNX (run by ONNX Runtime).
Exporting, loading and running them; torch, numpy and onnxruntime only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

RUNTIMES = ("onnx", "torch")
PROGRAM_FILE, ONNX_FILE = "model.pt2", "model.onnx"


def export_program(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """A torch.export program with a dynamic batch dimension (torch.jit.trace is deprecated)."""
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, path)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """ONNX via the dynamo exporter, dynamic batch; input `images` (N,3,H,W float32), output `logits`."""
    torch.onnx.export(model, (example,), str(path), dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                      input_names=["images"], output_names=["logits"], opset_version=opset, dynamo=True,
                      external_data=False)


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
        program = torch.export.load(export_dir / PROGRAM_FILE).module().to(device)

        @torch.no_grad()
        def run(batch: np.ndarray) -> np.ndarray:
            return program(torch.from_numpy(np.asarray(batch, dtype=np.float32)).to(device)).float().cpu().numpy()
        return run
    raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def compare(expected: np.ndarray, actual: np.ndarray, atol: float) -> dict:
    """Parity figures of `actual` logits against `expected`."""
    return {"images": int(len(expected)), "max_abs_diff": float(np.abs(expected - actual).max()),
            "top1_agreement": float((expected.argmax(1) == actual.argmax(1)).mean()), "atol": atol}
