"""Grad-CAM saliency (Selvaraju et al. 2017) for any architecture in the table, and grids of it over the
test images the model confuses.

Grad-CAM is ~20 lines of torch hooks here rather than a library: pytorch-grad-cam and captum would be a
dependency (and their pins) for one weighted sum, and the layer to look at is already a fact of the
architecture table (`cam_layer`)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import torch
from torch import nn

from imgcls.evaluation.metrics import confused_pairs
from imgcls.files import write_figure
from imgcls.model.architectures import ARCHITECTURES


def grad_cam(
    model: nn.Module, arch: str, images: torch.Tensor, classes: torch.Tensor, cells: list | None = None
) -> torch.Tensor:
    """Maps in [0, 1] of shape (N, H, W) at the input's size: where in each image the `cam_layer` activations
    raise the logit of its class in `classes`. Gradient-weighted channel sum, ReLU, bilinear upsampling,
    each map scaled by its own maximum (an all-zero map stays zero: nothing there argues for the class).
    `cells`, if given, receives the layer's (height, width): how finely the maps can localise at all."""
    layer = model.get_submodule(ARCHITECTURES[arch].cam_layer)
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["activations"] = output

    handle = layer.register_forward_hook(keep)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(images.detach().requires_grad_(True))  # gradients reach the layer even when frozen
            logits.gather(1, classes.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
    activations = captured["activations"]
    if cells is not None:
        cells[:] = activations.shape[-2:]
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)  # each channel's importance for the class
    cam = torch.relu((weights * activations).sum(1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    model.zero_grad(set_to_none=True)
    return cam / peak


def file_name(rank: int, actual: str, predicted: str) -> str:
    """A portable file name for a pair of class names, which may hold any character a folder name can."""

    def safe(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "class"

    return f"{rank:02d}_{safe(actual)}_as_{safe(predicted)}.png"


def to_pixels(images: torch.Tensor, spec: dict) -> torch.Tensor:
    """Normalised model inputs back to (N, H, W, 3) RGB in [0, 1] for display."""
    mean, std = (torch.tensor(spec[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    return (images.float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


def grid_figure(pixels: torch.Tensor, maps: torch.Tensor, captions: list[str], title: str):
    """Two rows per image batch: the image as the model saw it, and the Grad-CAM map over it."""
    from matplotlib.figure import Figure

    columns = len(captions)
    width = max(1.6 * columns + 0.4, 6.0)
    title = "\n".join(textwrap.fill(line, int(width * 13)) for line in title.split("\n"))
    figure = Figure(figsize=(width, 3.6 + 0.2 * title.count("\n")))
    axes = figure.subplots(2, columns, squeeze=False)
    for column, caption in enumerate(captions):
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(pixels[column].numpy(), interpolation="nearest")
        bottom.imshow(pixels[column].numpy().mean(-1), cmap="gray", interpolation="nearest")
        bottom.imshow(maps[column].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        top.set_title(caption, fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("Grad-CAM", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def write_grids(
    model: nn.Module,
    arch: str,
    load,
    targets: torch.Tensor,
    logits: torch.Tensor,
    names: list[str],
    spec: dict,
    folder: Path,
    pairs: int,
    wrong: int,
    right: int,
) -> list[Path]:
    """One PNG per confused pair (the `pairs` most frequent): up to `wrong` of its mistakes, mapped for the
    class the model chose, then up to `right` images of the actual class it got right, mapped for that class,
    for contrast; with no mistakes at all, one grid of correct images. `load(indices)` gives those test images
    as model inputs on the model's device. Returns the files written, in order."""
    predicted, probabilities = logits.argmax(1), torch.softmax(logits.double(), 1)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if pairs == 0:
        return written
    jobs = confused_pairs(targets, predicted, pairs) or [(None, None, 0)]
    for rank, (actual, guess, count) in enumerate(jobs, 1):
        if actual is None:
            chosen = (predicted == targets).nonzero().flatten()[: wrong + right].tolist()
            title, path = (
                "no test image is misclassified: correct ones, mapped for their class",
                "00_no_mistakes.png",
            )
        else:
            mistakes = ((targets == actual) & (predicted == guess)).nonzero().flatten()[:wrong].tolist()
            contrast = ((targets == actual) & (predicted == actual)).nonzero().flatten()[:right].tolist()
            chosen = mistakes + contrast
            title = (
                f"{names[actual]} taken for {names[guess]}: {count} of "
                f"{int((targets == actual).sum())} test images (first {len(mistakes)} shown), then "
                f"{len(contrast)} {names[actual]} it got right"
            )
            path = file_name(rank, names[actual], names[guess])
        if not chosen:
            continue
        images, cells = load(chosen), []
        maps = grad_cam(model, arch, images, predicted[chosen].to(images.device), cells).cpu()
        if max(cells) == 1:
            title += (
                f"\n{ARCHITECTURES[arch].cam_layer} is 1 x 1 at {images.shape[-1]} px input: each map is "
                "one value for the whole image and cannot show where the model looked"
            )
        captions = [
            f"{names[targets[i]]}\n→ {names[predicted[i]]} {probabilities[i, predicted[i]]:.2f}"
            for i in chosen
        ]
        figure = grid_figure(to_pixels(images, spec), maps, captions, title)
        written.append(write_figure(folder / path, figure))
    return written
