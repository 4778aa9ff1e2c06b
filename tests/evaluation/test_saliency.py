"""Grad-CAM: it looks where the evidence is, it runs on every architecture in the table, and the grids name
what they show."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.transforms import preprocessing_spec
from imgcls.evaluation.metrics import confused_pairs
from imgcls.evaluation.saliency import file_name, grad_cam, write_grids
from imgcls.model.architectures import ARCHITECTURES
from imgcls.model.networks import build_model, freeze_backbone

SIZE = 128  # ResNet-18's layer4 is 4 x 4 here; at 64 px (2 x 2) every cell sees the whole image


def corner_images(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; class 1 alone has a white patch in the top-right corner, the only thing that differs."""
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.6 + 0.2
    labels = torch.arange(count) % 2
    images[labels == 1, :, : SIZE // 4, -SIZE // 4 :] = 1.0
    return (images - 0.45) / 0.25, labels


def test_the_map_peaks_in_the_corner_that_tells_the_classes_apart():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images, labels = corner_images(64, generator)
    model = build_model("resnet18", 2)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train()
    for _ in range(6):
        for start in range(0, len(images), 16):
            loss = torch.nn.functional.cross_entropy(
                model(images[start : start + 16]), labels[start : start + 16]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():  # BatchNorm statistics of the final weights, as evaluation sees them
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        model(images)
    model.eval()
    test, test_labels = corner_images(16, generator)
    assert (model(test).argmax(1) == test_labels).all(), "the model did not learn the corner"

    marked, cells = test[test_labels == 1], []
    maps = grad_cam(model, "resnet18", marked, torch.ones(len(marked), dtype=torch.long), cells)
    assert list(cells) == [SIZE // 32, SIZE // 32]
    peaks = maps.flatten(1).argmax(1)
    rows, columns = peaks // SIZE, peaks % SIZE
    in_corner = (rows < SIZE // 2) & (columns >= SIZE // 2)
    assert in_corner.all(), (
        f"peaks at {list(zip(rows.tolist(), columns.tolist()))}, not in the top-right quarter"
    )
    corner_mass = maps[:, : SIZE // 2, SIZE // 2 :].sum((1, 2)) / maps.sum((1, 2))
    # a quarter of the image holds most of the map, not a quarter
    assert (corner_mass > 0.4).all(), corner_mass


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_gives_maps_at_the_input_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3).eval()
    # as the pipeline trains by default: gradients must still reach the CAM layer
    freeze_backbone(model, arch)
    size = max(ARCHITECTURES[arch].min_size, 32) + 8
    images = torch.randn(2, 3, size, size + 4)
    maps = grad_cam(model, arch, images, torch.tensor([0, 2]))
    assert maps.shape == (2, size, size + 4)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(p.grad is None for p in model.parameters()), "grad_cam left gradients on the model"


def test_grids_cover_the_most_frequent_confusions_with_contrast(tmp_path):
    torch.manual_seed(0)
    names = ["cat", "dog/puppy", "cät"]  # class names that are no portable file names
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    logits = torch.full((10, 3), -1.0)
    predicted = [1, 1, 1, 0, 1, 2, 2, 2, 2, 0]  # cat->dog 3x, dog->cät 2x, cät->cat 1x
    logits[torch.arange(10), torch.tensor(predicted)] = 2.0
    assert confused_pairs(targets, torch.tensor(predicted), 5) == [(0, 1, 3), (1, 2, 2), (2, 0, 1)]
    model = build_model("resnet18", 3).eval()
    images = torch.randn(10, 3, 32, 32)
    loaded = []

    def load(indices):
        loaded.append(list(indices))
        return images[indices]

    written = write_grids(
        model,
        "resnet18",
        load,
        targets,
        logits,
        names,
        preprocessing_spec(32),
        tmp_path,
        pairs=2,
        wrong=2,
        right=1,
    )
    assert [p.name for p in written] == ["01_cat_as_dog-puppy.png", "02_dog-puppy_as_c-t.png"]
    assert loaded == [[0, 1, 3], [5, 6, 4]]  # two of the three mistakes, then one it got right
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    assert (
        write_grids(
            model,
            "resnet18",
            load,
            targets,
            logits,
            names,
            preprocessing_spec(32),
            tmp_path / "none",
            pairs=0,
            wrong=2,
            right=1,
        )
        == []
    )
    perfect = write_grids(
        model,
        "resnet18",
        load,
        targets,
        logits.scatter(1, targets.view(-1, 1), 5.0),
        names,
        preprocessing_spec(32),
        tmp_path / "perfect",
        pairs=2,
        wrong=2,
        right=1,
    )
    assert [p.name for p in perfect] == ["00_no_mistakes.png"]
    assert file_name(3, "", "////") == "03_class_as_class.png"
