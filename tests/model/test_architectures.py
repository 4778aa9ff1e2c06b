"""Every architecture in the table builds, takes a backbone from a checkpoint with another head, and freezes
to its head alone: what `train` needs of it."""

from __future__ import annotations

import pytest
import torch

from imgcls.model.architectures import ARCHITECTURES
from imgcls.model.networks import build_model, freeze_backbone, head_classes, load_backbone


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_row_names_layers_the_model_has(arch):
    with torch.device("meta"):  # no memory, no init: the table's names and widths only
        model = build_model(arch, 3)
    assert model.get_submodule(ARCHITECTURES[arch].head).in_features == ARCHITECTURES[arch].features
    assert isinstance(model.get_submodule(ARCHITECTURES[arch].cam_layer), torch.nn.Module)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_min_size_is_the_smallest_input_the_model_takes(arch):
    smallest, model = ARCHITECTURES[arch].min_size, build_model(arch, 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, smallest, smallest)).shape == (1, 3)
        if smallest > 1:
            with pytest.raises(RuntimeError):
                model(torch.randn(1, 3, smallest - 1, smallest - 1))


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "convnext_tiny"])  # one of each family
def test_table_row_is_enough_to_fine_tune(arch):
    facts = ARCHITECTURES[arch]
    source = build_model(arch, 10)
    assert head_classes(arch, source.state_dict()) == 10
    assert source.get_submodule(facts.head).in_features == facts.features
    assert isinstance(source.get_submodule(facts.cam_layer), torch.nn.Module)
    target = build_model(arch, 3)
    load_backbone(target, arch, source.state_dict(), "source")
    backbone = [k for k in source.state_dict() if not k.startswith(facts.head + ".")]
    assert all(torch.equal(target.state_dict()[k], source.state_dict()[k]) for k in backbone)
    freeze_backbone(target, arch)
    trainable = {n for n, p in target.named_parameters() if p.requires_grad}
    assert trainable == {f"{facts.head}.weight", f"{facts.head}.bias"}
    assert target(torch.randn(2, 3, 32, 32)).shape == (2, 3)
