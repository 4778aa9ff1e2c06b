"""Splits are seeded, follow each class's fractions, never move an image when others are added, and never put
the same content in two splits."""

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


def test_shares_follow_the_fractions_per_class_within_sampling_noise():
    data = items({"a": 2000, "b": 1200, "c": 800})
    splits = assign_splits(data, 0.15, 0.2, seed=0)
    per = Counter((d["label"], s) for d, s in zip(data, splits))
    for label, n in (("a", 2000), ("b", 1200), ("c", 800)):
        for split, fraction in (("test", 0.2), ("val", 0.15)):
            noise = 4 * (n * fraction * (1 - fraction)) ** 0.5  # four binomial standard deviations
            assert abs(per[(label, split)] - fraction * n) <= noise, (label, split, per)


def test_added_images_join_by_their_own_hash_and_never_move_the_others():
    before = items({"a": 30, "b": 30})
    after = before + items({"a": 33, "b": 31, "c": 12})[30:]  # new in a, b, and a new class
    old = assign_splits(before, 0.2, 0.1, seed=3)
    new = assign_splits(after, 0.2, 0.1, seed=3)
    assert new[: len(before)] == old
    shuffled = list(reversed(after))  # the order of the folder listing does not matter either
    assert list(reversed(assign_splits(shuffled, 0.2, 0.1, seed=3))) == new


def test_every_class_gets_an_image_in_each_split_it_asks_for():
    data = items({"a": 3, "b": 3, "c": 4})
    splits = assign_splits(data, 0.05, 0.05, seed=0)
    per = Counter((d["label"], s) for d, s in zip(data, splits))
    assert all(per[(label, s)] >= 1 for label in "abc" for s in ("train", "val", "test")), per
    assert "test" not in assign_splits(data, 0.05, 0.0, seed=0)


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


def test_a_class_too_small_for_its_splits_says_what_to_change():
    with pytest.raises(
        SplitError, match=r"class 'a' has 2 images, too few for a (test|val) image.*min_per_class"
    ):
        assign_splits(items({"a": 2, "b": 5}), 0.2, 0.2, seed=0)
    with pytest.raises(SplitError, match=r"at least 2 classes"):
        assign_splits(items({"a": 5}), 0.2, 0.2, seed=0)
