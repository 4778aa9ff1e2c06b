"""Leak-free splits: one copy per content hash, label conflicts resolved, each image split by its own hash."""

from __future__ import annotations

import hashlib
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


def split_point(pixels_sha256: str, seed: int) -> float:
    """Where an image falls in [0, 1): from its own decoded pixels and the seed, nothing else."""
    digest = hashlib.sha256(f"{seed}:{pixels_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(items: list[dict], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Each image's split (for `items` in their given order) from its own content hash and the seed: test
    below `test_fraction`, val below `test_fraction + val_fraction`, train above. So an image added later
    joins a split by its own hash and never moves another, and a full prepare and an incremental one agree.
    Per class the shares follow the fractions up to sampling noise; a class left with no image in a split
    whose fraction is above 0 takes, from its largest split, the image nearest that split's band (decided
    by the class's own images alone). A fraction of 0 leaves that split empty (the test split then comes
    from `prepare.test_data`)."""
    classes = sorted({i["label"] for i in items})
    if len(classes) < 2:
        raise SplitError(f"need at least 2 classes to train a classifier, found {classes}")
    points = [split_point(i["pixels_sha256"], seed) for i in items]
    bands = (("test", test_fraction), ("val", test_fraction + val_fraction), ("train", math.inf))
    split_of = [next(name for name, top in bands if point < top) for point in points]
    wanted = [name for name, fraction in zip(SPLITS, (1.0, val_fraction, test_fraction)) if fraction]
    by_class = defaultdict(list)
    for index in sorted(range(len(items)), key=points.__getitem__):
        by_class[items[index]["label"]].append(index)
    for label, members in by_class.items():  # members ordered by split point
        for split in wanted:
            sizes = Counter(split_of[i] for i in members)
            if sizes[split]:
                continue
            donor = max(SPLITS, key=lambda s: (sizes[s], -SPLITS.index(s)))
            if sizes[donor] < 2:
                raise SplitError(
                    f"class '{label}' has {len(members)} images, too few for a {split} image of its own "
                    f"(prepare.val_fraction={val_fraction}, prepare.test_fraction={test_fraction}); add "
                    "images or raise prepare.min_per_class"
                )
            given = [i for i in members if split_of[i] == donor]
            # nearest the empty band: test lies lowest, train highest, val between them
            lower = split == "test" or (split == "val" and donor == "train")
            split_of[given[0] if lower else given[-1]] = split
    return split_of
