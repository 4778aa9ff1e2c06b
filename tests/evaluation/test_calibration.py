"""ECE, the reliability bins and temperature scaling, against cases whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from imgcls.evaluation.calibration import (
    TEMPERATURE_RANGE,
    calibrate,
    expected_calibration_error,
    fallback_reason,
    fit_temperature,
    reliability,
)
from imgcls.evaluation.metrics import gaps


def sampled(temperature: float, count: int = 4000, classes: int = 5, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / temperature): that T calibrates them."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, classes, generator=generator, dtype=torch.float64) * 3
    labels = torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=generator).flatten()
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_generated_the_labels(true_temperature):
    logits, labels = sampled(true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    held_out, held_labels = sampled(true_temperature, seed=1)
    result = calibrate(logits, labels, held_out, held_labels, fit=True)
    assert result["test_ece_calibrated"] < 0.03  # calibrated up to sampling noise on 4000 images
    if true_temperature != 1.0:
        assert result["test_ece"] > 2 * result["test_ece_calibrated"]
        assert result["test_nll_calibrated"] < result["test_nll"]
    assert result["temperature_fallback"] == "" and result["temperature"] == result["temperature_fitted"]


def test_a_fit_that_cannot_be_trusted_falls_back_to_one_and_says_why():
    """Val logits that are right and sure every time: the NLL falls as T shrinks, so the fit runs into the
    edge of the search range. Exporting that T would call every prediction certain; T = 1 is exported
    instead."""
    labels = torch.arange(40) % 4
    logits = torch.nn.functional.one_hot(labels, 4).double() * 5.0
    result = calibrate(logits, labels, logits, labels, fit=True)
    assert result["temperature_fitted"] == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)
    assert result["temperature"] == 1.0 and "edge of the search range" in result["temperature_fallback"]
    assert result["test_nll_calibrated"] == result["test_nll"]  # nothing scaled
    assert fallback_reason(2.0, logits, labels).startswith("T = 2 does not lower the val NLL")


def test_off_means_temperature_one_and_no_val_needed():
    logits, labels = sampled(2.0)
    empty = torch.empty(0, 5), torch.empty(0, dtype=torch.long)
    result = calibrate(*empty, logits, labels, fit=False)
    assert result["temperature"] == 1.0 and result["test_ece"] == result["test_ece_calibrated"]
    with pytest.raises(ValueError, match="val split is empty.*evaluate.temperature_scaling: false"):
        fit_temperature(*empty)


def test_ece_by_hand():
    # two images at confidence 0.9 (one right), one at 0.6 (right): bins (0.8, 0.867], (0.867, 0.933], ...
    logits = torch.tensor([[math.log(9.0), 0.0], [math.log(9.0), 0.0], [math.log(1.5), 0.0]])
    labels = torch.tensor([0, 1, 0])
    rows = reliability(logits, labels)
    used = [row for row in rows if row["images"]]
    assert [(row["images"], round(row["confidence"], 6), row["accuracy"]) for row in used] == [
        (1, 0.6, 1.0),
        (2, 0.9, 0.5),
    ]
    assert sum(row["images"] for row in rows) == 3 and len(rows) == 15
    assert expected_calibration_error(rows) == pytest.approx(1 / 3 * 0.4 + 2 / 3 * 0.4)


def test_gaps_list_lowest_recall_and_most_confused_pairs_with_counts():
    names = ["a", "b", "c", "d"]
    targets = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
    predicted = [0, 1, 1, 2, 1, 1, 0, 2, 2, 3]
    found = gaps(targets, predicted, names, limit=2)
    assert found["lowest_recall"] == {
        "a": {"rank": 1, "recall": 0.25, "correct": 1, "support": 4},
        "c": {"rank": 2, "recall": 2 / 3, "correct": 2, "support": 3},
    }
    assert found["confused_pairs"] == {
        "a -> b": {"rank": 1, "count": 2, "of_actual": 4, "share_of_actual": 0.5},
        "a -> c": {"rank": 2, "count": 1, "of_actual": 4, "share_of_actual": 0.25},
    }
    assert gaps([0, 1], [0, 1], ["x", "y"], 3)["confused_pairs"] == {}
