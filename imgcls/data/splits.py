"""Leak-free splits: one copy per content hash, label conflicts resolved, seeded stratified split."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The data cannot be split as the params ask; the message says what to change."""


def deduplicate(items: list[dict], on_conflict: str) -> tuple[list[dict], list[dict]]:
    """Keep one item per decoded image (`pixels_sha256`: a re-saved copy counts too). Returns (kept,
    excluded); excluded items gain 'kind' and 'reason'.

    Same content twice in one class: the first source path is kept. Same content in two
    classes is a label conflict: every copy is dropped (`on_conflict: drop`) or it fails.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for item in sorted(items, key=lambda i: i["source"]):
        groups[item["pixels_sha256"]].append(item)
    kept, excluded, conflicts = [], [], []
    for copies in groups.values():
        labels = sorted({c["label"] for c in copies})
        if len(labels) > 1:
            sources = ", ".join(c["source"] for c in copies)
            conflicts.append(sources)
            reason = f"label conflict: same content in classes {labels}: {sources}"
            excluded += [dict(c, kind="label_conflict", reason=reason) for c in copies]
            continue
        kept.append(copies[0])
        excluded += [
            dict(c, kind="duplicate", reason=f"duplicate of {copies[0]['source']}") for c in copies[1:]
        ]
    if conflicts and on_conflict == "fail":
        raise SplitError(
            "identical images in different classes (prepare.on_conflict: fail):\n  "
            + "\n  ".join(conflicts)
            + "\nRemove the wrong copies or set prepare.on_conflict: drop"
        )
    return kept, excluded


def drop_test_overlap(
    items: list[dict], test_items: list[dict], on_conflict: str
) -> tuple[list[dict], list[dict]]:
    """Leave out of train/val every image that is also in the fixed test set (`prepare.test_data`), in any
    class; the test set itself is never changed. Returns (kept, excluded with reasons)."""
    in_test = {t["pixels_sha256"]: t for t in test_items}
    kept, excluded, conflicts = [], [], []
    for item in items:
        twin = in_test.get(item["pixels_sha256"])
        if twin is None:
            kept.append(item)
            continue
        other = "" if twin["label"] == item["label"] else f", labelled '{twin['label']}' there"
        excluded.append(
            dict(
                item,
                kind="in_test_data",
                reason=f"same image as test_data {twin['source']}{other}: kept in the test split only",
            )
        )
        if other:
            conflicts.append(
                f"{item['source']} ({item['label']}) = test_data {twin['source']} ({twin['label']})"
            )
    if conflicts and on_conflict == "fail":
        raise SplitError(
            "identical images in different classes of prepare.data and prepare.test_data "
            "(prepare.on_conflict: fail):\n  "
            + "\n  ".join(conflicts)
            + "\nRemove the wrong copies or set prepare.on_conflict: drop"
        )
    return kept, excluded


def check_test_classes(test_items: list[dict], train_classes: set[str], test_data: str) -> None:
    """The fixed test set must hold images of exactly the classes the model is trained on."""
    test_classes = {t["label"] for t in test_items}
    if test_classes != train_classes:
        raise SplitError(
            f"prepare.test_data={test_data} has classes {sorted(test_classes)} but the training data "
            f"has {sorted(train_classes)}; give both folders the same class sub-folders"
        )


def check_class_sizes(
    items: list[dict], classes: list[str], min_per_class: int, small_classes: str
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Fail on, or drop, classes (empty folders too) with fewer than `min_per_class` usable images.

    Returns (kept items, excluded items with reasons, {dropped class: usable images})."""
    found = Counter(i["label"] for i in items)
    counts = {label: found[label] for label in set(classes) | set(found)}
    small = {label: n for label, n in counts.items() if n < min_per_class}
    if small and small_classes == "fail":
        listing = ", ".join(f"'{k}': {v}" for k, v in sorted(small.items()))
        raise SplitError(
            f"class(es) with fewer than prepare.min_per_class={min_per_class} usable images: "
            f"{listing}. Add images, or set prepare.small_classes: drop to leave them out"
        )
    kept = [i for i in items if i["label"] not in small]
    dropped = [
        dict(
            i,
            kind="small_class",
            reason=f"class '{i['label']}' has {small[i['label']]} usable images, "
            f"below prepare.min_per_class={min_per_class} (prepare.small_classes: drop)",
        )
        for i in items
        if i["label"] in small
    ]
    return kept, dropped, dict(sorted(small.items()))


def assign_splits(items: list[dict], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Seeded, stratified train/val/test labels for `items` (in their given order); a fraction of 0 leaves
    that split empty (the test split then comes from `prepare.test_data`)."""
    from sklearn.model_selection import train_test_split

    labels = [i["label"] for i in items]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise SplitError(f"need at least 2 classes to train a classifier, found {classes}")
    n = len(items)
    val_share = val_fraction / (1.0 - test_fraction)
    n_test = math.ceil(n * test_fraction)  # sklearn rounds the held-out part up
    n_val = math.ceil((n - n_test) * val_share)
    for name, size, fraction in (
        ("test", n_test, test_fraction),
        ("val", n_val, val_fraction),
        ("train", n - n_test - n_val, 1.0),
    ):
        if fraction and size < len(classes):
            raise SplitError(
                f"{n} images give {size} {name} images, fewer than the {len(classes)} classes "
                f"(prepare.val_fraction={val_fraction}, prepare.test_fraction={test_fraction}); "
                "add images or change the fractions"
            )
    split_of = dict.fromkeys(range(n), "train")
    rest = list(range(n))
    for name, share in (("test", test_fraction), ("val", val_share)):
        if share:
            rest, held = train_test_split(
                rest, test_size=share, stratify=[labels[i] for i in rest], random_state=seed
            )
            split_of.update(dict.fromkeys(held, name))
    return [split_of[i] for i in range(n)]
