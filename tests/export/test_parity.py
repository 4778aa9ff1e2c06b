"""The parity gate between the trained module and its exports: a model whose logits are not finite is
never exported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgcls.export.parity import check_parity


def test_parity_gate_refuses_non_finite_logits(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * float("nan")

    with pytest.raises(RuntimeError, match="non-finite logits"):
        check_parity(Broken(), tmp_path, torch.randn(2, 3, 4, 4), atol=1e-4)
