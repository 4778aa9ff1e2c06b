"""Splits are seeded, stratified, and never put the same content in two splits."""

from collections import Counter

import pytest

from imgcls.data.splits import SplitError, assign_splits, check_class_sizes, deduplicate


def items(counts: dict[str, int]) -> list[dict]:
    return [
        {"source": f"{label}/{i}.png", "label": label, "pixels_sha256": f"{label}-{i}"}
        for label, n in counts.items()
        for i in range(n)
    ]


def test_same_seed_same_splits_other_seed_differs():
    data = items({"a": 40, "b": 40, "c": 40})
    first = assign_splits(data, 0.15, 0.2, seed=7)
    assert first == assign_splits(data, 0.15, 0.2, seed=7)
    assert first != assign_splits(data, 0.15, 0.2, seed=8)


def test_stratified_fractions_per_class():
    data = items({"a": 100, "b": 60, "c": 40})
    splits = assign_splits(data, 0.15, 0.2, seed=0)
    per = Counter((d["label"], s) for d, s in zip(data, splits))
    for label, n in (("a", 100), ("b", 60), ("c", 40)):
        assert abs(per[(label, "test")] - 0.2 * n) <= 1
        assert abs(per[(label, "val")] - 0.15 * n) <= 1
        assert per[(label, "train")] + per[(label, "val")] + per[(label, "test")] == n


def test_duplicates_kept_once_and_conflicts_dropped():
    data = items({"a": 5, "b": 5})
    data.append({"source": "a/copy.png", "label": "a", "pixels_sha256": "a-0"})  # same class twice
    data.append({"source": "b/clash.png", "label": "b", "pixels_sha256": "a-1"})  # same content, two classes
    kept, excluded = deduplicate(data, on_conflict="drop")
    assert len({k["pixels_sha256"] for k in kept}) == len(kept) == 9
    reasons = {e["source"]: e["kind"] for e in excluded}
    assert reasons == {
        "a/copy.png": "duplicate",
        "a/1.png": "label_conflict",
        "b/clash.png": "label_conflict",
    }
    with pytest.raises(SplitError, match="(?s)a/1.png, b/clash.png.*on_conflict: drop"):
        deduplicate(data, on_conflict="fail")


def test_small_class_fails_with_counts_or_is_dropped_and_reported():
    data = items({"a": 20, "tiny": 3})
    with pytest.raises(SplitError, match="min_per_class=10.*'tiny': 3.*small_classes: drop"):
        check_class_sizes(data, ["a", "tiny"], 10, "fail")
    kept, dropped, small = check_class_sizes(data, ["a", "tiny", "empty"], 10, "drop")
    assert {k["label"] for k in kept} == {"a"} and len(dropped) == 3
    assert all(d["kind"] == "small_class" for d in dropped)
    assert small == {"empty": 0, "tiny": 3}


def test_too_few_images_for_a_split_says_which_fraction():
    with pytest.raises(
        SplitError, match=r"10 images give 1 test images, fewer than the 2 classes.*test_fraction=0.05"
    ):
        assign_splits(items({"a": 5, "b": 5}), 0.2, 0.05, seed=0)
    assert len(assign_splits(items({"a": 5, "b": 5}), 0.2, 0.2, seed=0)) == 10
