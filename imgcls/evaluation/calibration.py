"""How far a model's confidence can be trusted: expected calibration error (ECE), the reliability diagram, and
temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

Temperature scaling divides the logits by one number T fitted on the validation split. It never changes the
top-1 class, so accuracy and the exported logits stay as they are; only the probabilities move. Everything
is float64 torch on the CPU with a fixed order of operations, so the pinned runtime gives the same bits on
every machine."""

from __future__ import annotations

import math

import torch

BINS = 15  # equal-width confidence bins, as in Guo et al.
TEMPERATURE_RANGE = (0.05, 20.0)  # searched on a log scale; a fit at either end is reported, not hidden


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(logits.double() / temperature, dim=1)


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    return torch.nn.functional.cross_entropy(logits.double() / temperature, targets).item()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, steps: int = 80) -> float:
    """The T that minimises the validation NLL. The NLL is convex in 1/T, hence unimodal in log T, so a
    golden-section search on log T finds the minimum without gradients or a learning rate to tune."""
    if len(targets) == 0:
        raise ValueError(
            "temperature scaling needs validation images: the val split is empty "
            "(raise prepare.val_fraction, or set evaluate.temperature_scaling: false)"
        )
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, targets, math.exp(a)), nll(logits, targets, math.exp(b))
    for _ in range(steps):  # the interval shrinks by 0.618 a step: 80 steps reach float64's resolution
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, targets, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, targets, math.exp(b))
    return math.exp((low + high) / 2)


def reliability(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, bins: int = BINS
) -> list[dict]:
    """Per equal-width confidence bin: images, mean confidence (top-1 probability) and accuracy."""
    confidence, predicted = probabilities(logits, temperature).max(1)
    correct = (predicted == targets).double()
    # bin k holds confidences in (k/bins, (k+1)/bins]; the top-1 probability is at least 1/classes > 0
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    rows = []
    for k in range(bins):
        inside = index == k
        count = int(inside.sum())
        rows.append(
            {
                "bin": k,
                "low": k / bins,
                "high": (k + 1) / bins,
                "images": count,
                "confidence": confidence[inside].mean().item() if count else None,
                "accuracy": correct[inside].mean().item() if count else None,
            }
        )
    return rows


def expected_calibration_error(rows: list[dict]) -> float:
    """Sum over bins of (share of images) x |accuracy - confidence|: the expected gap between how sure the
    model is and how often it is right."""
    total = sum(row["images"] for row in rows)
    return sum(
        row["images"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows if row["images"]
    )


def fallback_reason(fitted: float, val_logits: torch.Tensor, val_targets: torch.Tensor) -> str:
    """Why a fitted T must not be used (empty when it may): a fit at the edge of the search range says the val
    split is too small or too easy to calibrate on, and a T that does not lower the val NLL cannot help."""
    if any(math.isclose(fitted, bound, rel_tol=1e-3) for bound in TEMPERATURE_RANGE):
        return (
            f"the fit reached the edge of the search range (T = {fitted:.4g}): the val split is too small or "
            "too easy to calibrate on"
        )
    scaled, raw = nll(val_logits, val_targets, fitted), nll(val_logits, val_targets, 1.0)
    if not scaled < raw:
        return f"T = {fitted:.4g} does not lower the val NLL ({raw:.4f} -> {scaled:.4f})"
    return ""


def calibrate(
    val_logits: torch.Tensor,
    val_targets: torch.Tensor,
    test_logits: torch.Tensor,
    test_targets: torch.Tensor,
    fit: bool,
) -> dict:
    """Fit T on val (T = 1 when `fit` is off, or when the fit cannot be trusted: `fallback_reason`) and
    measure ECE and NLL on test before and after. Scaling never makes the exported probabilities worse on
    val."""
    fitted = fit_temperature(val_logits, val_targets) if fit else 1.0
    fallback = fallback_reason(fitted, val_logits, val_targets) if fit else ""
    temperature = 1.0 if fallback else fitted
    before = reliability(test_logits, test_targets)
    after = reliability(test_logits, test_targets, temperature)
    return {
        "temperature": temperature,
        "temperature_fitted": fitted,
        "temperature_fallback": fallback,
        "val_images": len(val_targets),
        "test_ece": expected_calibration_error(before),
        "test_ece_calibrated": expected_calibration_error(after),
        "test_nll": nll(test_logits, test_targets, 1.0),
        "test_nll_calibrated": nll(test_logits, test_targets, temperature),
        "bins": {"uncalibrated": before, "calibrated": after},
    }


def reliability_figure(result: dict):
    """The reliability diagram: accuracy against confidence per bin, before and after scaling, with the
    diagonal a calibrated model would follow and each bin's share of images."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.2))
    axes = figure.subplots(1, 2, sharey=True)
    titles = {
        "uncalibrated": f"before: ECE {result['test_ece']:.4f}",
        "calibrated": f"after T = {result['temperature']:.3f}: ECE {result['test_ece_calibrated']:.4f}",
    }
    for ax, (name, rows) in zip(axes, result["bins"].items()):
        used = [row for row in rows if row["images"]]
        total = sum(row["images"] for row in used)
        width = 1 / len(rows)
        ax.bar(
            [row["low"] for row in used],
            [row["accuracy"] for row in used],
            width=width,
            align="edge",
            color="#4c72b0",
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            [row["low"] for row in used],
            [row["confidence"] - row["accuracy"] for row in used],
            width=width,
            bottom=[row["accuracy"] for row in used],
            align="edge",
            color="#dd8452",
            alpha=0.45,
            edgecolor="#dd8452",
            label="gap to confidence",
        )
        for row in used:
            ax.text(
                row["low"] + width / 2,
                0.02,
                f"{row['images'] / total:.0%}",
                ha="center",
                fontsize=6,
                color="white",
                rotation=90,
            )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top-1 probability)",
            title=f"test split, {titles[name]}",
        )
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure
