"""Exports checked against the model that made them, on the real test images: every runtime's logits within
`export.atol` of the eager model's, the same top-1 class for every image, nothing not finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.config import layout
from imgcls.data.datasets import model_split
from imgcls.data.loaders import make_loader
from imgcls.data.transforms import to_model_input
from imgcls.export.formats import RUNTIMES, compare, load_runtime


def test_images(batch_size: int, checkpoint: dict) -> torch.Tensor:
    """The real test split, preprocessed exactly as at evaluation."""
    dataset = model_split(layout.PREPARED, "test", checkpoint)
    loader = make_loader(dataset, batch_size, False, 0, 0)
    return torch.cat([to_model_input(images, torch.device("cpu")) for images, _ in loader])


@torch.no_grad()
def check_parity(model, out: Path, images: torch.Tensor, atol: float) -> dict:
    """Each runtime's logits vs the eager model's on the same images; raises beyond `atol`, on any top-1
    change, or on any value that is not finite (NaN never passes a tolerance)."""
    expected = model(images).numpy()
    if not np.isfinite(expected).all():
        raise RuntimeError(
            "models/model.pt gives non-finite logits on the test images: the model is broken "
            "(did training diverge?); not exporting it"
        )
    parity = {name: compare(expected, load_runtime(out, name)(images.numpy()), atol) for name in RUNTIMES}
    broken = {
        k: v
        for k, v in parity.items()
        if not np.isfinite(v["max_abs_diff"]) or v["max_abs_diff"] > atol or v["top1_agreement"] < 1.0
    }
    if broken:
        raise RuntimeError(
            f"exported model disagrees with models/model.pt on the test images: {broken}. "
            "The export is not trustworthy; not registering it"
        )
    return parity
