"""Test-set scores and their 95% intervals (a seeded bootstrap over the test images), the weakest classes and
pairs, and the whole assessment evaluate writes. torch, numpy and sklearn only."""

from __future__ import annotations

import numpy as np
import torch

from imgcls.config.params import EvaluateParams
from imgcls.evaluation.calibration import calibrate


def score(targets: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro and weighted F1, and the per-class report."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    labels = list(range(len(class_names)))
    report = classification_report(
        targets, predicted, labels=labels, target_names=class_names, output_dict=True, zero_division=0
    )
    return {
        "test_accuracy": accuracy_score(targets, predicted),
        "test_f1_macro": f1_score(targets, predicted, labels=labels, average="macro", zero_division=0),
        "test_f1_weighted": f1_score(targets, predicted, labels=labels, average="weighted", zero_division=0),
        "test_images": int(len(targets)),
        "per_class": {
            name: {k: report[name][k] for k in ("precision", "recall", "f1-score", "support")}
            for name in class_names
        },
    }


def confused_pairs(targets, predicted, limit: int) -> list[tuple[int, int, int]]:
    """(actual, predicted, count) of the most frequent mistakes, most first; ties by class index."""
    pairs: dict[tuple[int, int], int] = {}
    for actual, guess in zip(np.asarray(targets).tolist(), np.asarray(predicted).tolist()):
        if actual != guess:
            pairs[actual, guess] = pairs.get((actual, guess), 0) + 1
    return [(a, p, n) for (a, p), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))][:limit]


def gaps(targets: np.ndarray, predicted: np.ndarray, class_names: list[str], limit: int) -> dict:
    """Where the model falls short: the `limit` classes of lowest recall and the `limit` most frequent
    confusions, with the counts behind each figure (a recall of 0.5 may be 1 of 2 images)."""
    targets, predicted = np.asarray(targets), np.asarray(predicted)
    support = np.bincount(targets, minlength=len(class_names))
    correct = np.bincount(targets[targets == predicted], minlength=len(class_names))
    present = [k for k in range(len(class_names)) if support[k]]
    lowest = sorted(present, key=lambda k: (correct[k] / support[k], k))[:limit]
    return {
        "lowest_recall": {
            class_names[k]: {
                "rank": rank,
                "recall": float(correct[k] / support[k]),
                "correct": int(correct[k]),
                "support": int(support[k]),
            }
            for rank, k in enumerate(lowest, 1)
        },
        "confused_pairs": {
            f"{class_names[a]} -> {class_names[p]}": {
                "rank": rank,
                "count": n,
                "of_actual": int(support[a]),
                "share_of_actual": n / int(support[a]),
            }
            for rank, (a, p, n) in enumerate(confused_pairs(targets, predicted, limit), 1)
        },
    }


def bootstrap_intervals(
    targets: np.ndarray,
    predicted: np.ndarray,
    num_classes: int,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict:
    """Percentile-bootstrap intervals of accuracy and macro F1: how much the score could move on another test
    set drawn like this one (not how much it moves from training run to training run).

    Every statistic comes from integer counts and a fixed order of operations, so the bounds are the same bits
    on every machine."""
    rng = np.random.default_rng(seed)
    n = len(targets)
    pairs = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    accuracy, f1_macro = np.empty(resamples), np.empty(resamples)
    for b in range(resamples):
        counts = np.bincount(pairs[rng.integers(0, n, n)], minlength=num_classes**2)
        matrix = counts.reshape(num_classes, num_classes)  # rows: actual, columns: predicted
        hits = np.diag(matrix)
        accuracy[b] = int(hits.sum()) / n
        per_class = [
            2 * int(hits[k]) / d if (d := int(matrix[k].sum() + matrix[:, k].sum())) else 0.0
            for k in range(num_classes)
        ]
        f1_macro[b] = sum(per_class) / num_classes  # sklearn's zero_division=0: a class never seen scores 0
    tail = (1 - level) / 2 * 100
    bounds = {
        name: np.percentile(values, [tail, 100 - tail])
        for name, values in (("test_accuracy", accuracy), ("test_f1_macro", f1_macro))
    }
    return {f"{name}_ci95": {"low": float(low), "high": float(high)} for name, (low, high) in bounds.items()}


def assess(
    logits: torch.Tensor,
    targets: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor],
    class_names: list[str],
    cfg: EvaluateParams,
) -> tuple[dict, dict, dict]:
    """Everything measured on the test split: (headline metrics, the report behind them, the calibration with
    its reliability bins). `val` is the val split's (logits, targets) that the temperature is fitted on."""
    predicted = logits.argmax(1).numpy()
    truth = targets.numpy()
    metrics = score(truth, predicted, class_names)
    metrics["test_loss"] = torch.nn.functional.cross_entropy(logits, targets).item()
    metrics |= bootstrap_intervals(truth, predicted, len(class_names), cfg.bootstrap, cfg.seed)
    calibration = calibrate(*val, logits, targets, cfg.temperature_scaling)
    metrics |= {k: v for k, v in calibration.items() if k not in ("bins", "temperature_fallback")}
    report = {
        "per_class": metrics.pop("per_class"),
        **gaps(truth, predicted, class_names, cfg.gaps),
        "calibration": {"temperature_fallback": calibration["temperature_fallback"]},
    }
    return metrics, report, calibration


def summary(metrics: dict, report: dict) -> list[str]:
    """What evaluate says when it ends: scores with intervals, calibration, and warnings about either."""
    lines = [
        "test accuracy {:.4f} (95% CI {:.4f}-{:.4f}), macro F1 {:.4f} ({:.4f}-{:.4f}) on {} images".format(
            metrics["test_accuracy"],
            *metrics["test_accuracy_ci95"].values(),
            metrics["test_f1_macro"],
            *metrics["test_f1_macro_ci95"].values(),
            metrics["test_images"],
        ),
        "calibration: T {:.4f} (fitted on val: {:.4f}); "
        "test ECE {:.4f} -> {:.4f}, NLL {:.4f} -> {:.4f}".format(
            metrics["temperature"],
            metrics["temperature_fitted"],
            metrics["test_ece"],
            metrics["test_ece_calibrated"],
            metrics["test_nll"],
            metrics["test_nll_calibrated"],
        ),
    ]
    if metrics["test_ece_calibrated"] > metrics["test_ece"]:
        lines.append(
            f"WARNING temperature scaling raised the test ECE ({metrics['test_ece']:.4f} -> "
            f"{metrics['test_ece_calibrated']:.4f}): T fitted on {metrics['val_images']} val images does not "
            "carry over to the test split; more val images would help (prepare.val_fraction), or turn it "
            "off (evaluate.temperature_scaling: false)"
        )
    if report["calibration"]["temperature_fallback"]:
        lines.append(
            f"WARNING temperature scaling not used (T = 1 is exported): "
            f"{report['calibration']['temperature_fallback']}"
        )
    return lines
