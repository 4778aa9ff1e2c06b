"""The prepare stage's steps besides decoding (imgcls/data/decoding.py): scan the input folders, drop
duplicates and leaks into the fixed test set, split what is left, place each image in its split and list what
was left out."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

from imgcls.config import layout
from imgcls.config.params import PrepareParams
from imgcls.data.images import PREPARED_SUFFIXES
from imgcls.data.scan import Candidate, scan
from imgcls.data.splits import (
    SPLITS,
    assign_splits,
    check_class_sizes,
    check_test_classes,
    deduplicate,
    drop_test_overlap,
)
from imgcls.files import write_csv

# sha256: the input file's; file_sha256: the prepared file's. The manifest changes whenever any prepared image
# does, so the stages after prepare depend on it alone, not on thousands of files (DVC checks those once, as
# prepare's output).
MANIFEST_FIELDS = [
    "origin",
    "source",
    "class",
    "split",
    "sha256",
    "pixels_sha256",
    "file",
    "file_sha256",
    "width",
    "height",
]


EXCLUDED_FIELDS = ["origin", "source", "class", "kind", "reason", "sha256", "pixels_sha256"]


def select(
    decoded: list[dict], classes: dict[str, list[str]], cfg: PrepareParams
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """One copy per image, nothing of the fixed test set in train/val, classes big enough, seeded splits:
    (kept items with their split, excluded items with reasons, dropped classes)."""
    kept, duplicates = deduplicate([i for i in decoded if i["origin"] == "data"], cfg.on_conflict)
    test_kept, test_duplicates = deduplicate(
        [i for i in decoded if i["origin"] == "test_data"], cfg.on_conflict
    )
    kept, overlap = drop_test_overlap(kept, test_kept, cfg.on_conflict)
    kept, small, dropped_classes = check_class_sizes(
        kept, classes["data"], cfg.min_per_class, cfg.small_classes
    )
    if cfg.fixed_test_set:
        check_test_classes(test_kept, {i["label"] for i in kept}, cfg.test_data)
    for item, split in zip(kept, assign_splits(kept, cfg.val_fraction, cfg.test_fraction, cfg.seed)):
        item["split"] = split
    return (
        kept + [dict(item, split="test") for item in test_kept],
        duplicates + test_duplicates + overlap + small,
        dropped_classes,
    )


def order(item: dict) -> tuple[str, str]:
    return item["origin"], item["source"]


def check_inputs(cfg: PrepareParams) -> dict[str, Path]:
    """Fail before any work on a missing/empty input or a test set inside the data: {origin: input folder}."""
    folders = {"data": check_input(cfg.data, "prepare.data")}
    if cfg.fixed_test_set:
        folders["test_data"] = check_input(cfg.test_data, "prepare.test_data")
        if overlaps(folders["data"], folders["test_data"]):
            raise ValueError(
                f"prepare.test_data={cfg.test_data} and prepare.data={cfg.data} overlap; the fixed "
                "test set must be a folder of its own"
            )
    return folders


def check_input(path: str, key: str) -> Path:
    root = Path(path).absolute()
    if not root.exists():
        raise FileNotFoundError(
            f"{key}={path} does not exist; point it at a folder with one sub-folder of images per class"
        )
    if not root.is_dir():
        raise NotADirectoryError(
            f"{key}={path} is a file; it must be a folder with one sub-folder of images per class"
        )
    if not any(root.iterdir()):
        raise ValueError(f"{key}={path} is empty; put one sub-folder of images per class in it")
    return root


def overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a.is_relative_to(b) or b.is_relative_to(a)


def scan_all(
    folders: dict[str, Path], follow_symlinks: bool
) -> tuple[list[tuple[str, Candidate]], list[dict], dict[str, list[str]]]:
    """Scan each input folder: ([(origin, candidate)], [excluded rows], {origin: class folder names})."""
    candidates, skipped, classes = [], [], {}
    for origin, folder in folders.items():
        found, left_out, classes[origin] = scan(folder, follow_symlinks)
        candidates += [(origin, c) for c in found]
        skipped += [{"origin": origin, **vars(e)} for e in left_out]
    return candidates, skipped, classes


def place(item: dict, staging: str, out: str, suffix: str) -> str:
    """Move the staged image to <out>/<split>/<class>/<stem>-<sha prefix><suffix>; return it relative (with
    10,000s of images, plain strings: pathlib's own cost was a third of an incremental prepare's)."""
    name = item["source"].rpartition("/")[2]
    dot = name.rfind(".")
    stem = name[:dot] if 0 < dot < len(name) - 1 else name  # as pathlib's stem
    stem = stem.replace("\\", "_")  # a name that was not UTF-8 holds escapes (\xff)
    relative = f"{item['split']}/{item['label']}/{stem}-{item['sha256'][:10]}{suffix}"
    os.replace(f"{staging}/{item['sha256']}{suffix}", f"{out}/{relative}")
    return relative


def summarize(kept: list[dict], excluded: list[dict], input_files: int) -> dict:
    counts = {s: dict(sorted(Counter(i["label"] for i in kept if i["split"] == s).items())) for s in SPLITS}
    assert len(kept) + len(excluded) == input_files, "every input file is either included or excluded"
    return {
        "input_files": input_files,
        "included": len(kept),
        "excluded": len(excluded),
        "classes": len({i["label"] for i in kept}),
        "split_sizes": {s: sum(c.values()) for s, c in counts.items()},
        "counts": counts,
        "excluded_by_kind": dict(sorted(Counter(e["kind"] for e in excluded).items())),
    }


def with_class(rows: list[dict]) -> list[dict]:
    """The CSV column is `class` (a Python keyword, so `label` inside the code)."""
    return [{"class": row["label"], **row} for row in rows]


def refuse_bad_files(bad: list[dict], on_bad_file: str) -> None:
    """With `prepare.on_bad_file: fail`, stop listing every unusable file (data/prepared stays as it was)."""
    if not bad or on_bad_file != "fail":
        return
    listing = "\n  ".join(f"{b['origin']} {b['source']}: {b['reason']}" for b in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    raise ValueError(
        f"{len(bad)} unusable image(s) (prepare.on_bad_file: fail):\n  {listing}{more}\n"
        "Fix or remove them, or set prepare.on_bad_file: skip to report them in "
        f"{layout.PREPARED}/excluded.csv and leave them out; {layout.PREPARED} is unchanged"
    )


def place_all(kept: list[dict], out: Path, image_format: str) -> None:
    """Every kept image from the staging folder into its split; the staged copies of the rest are deleted."""
    staging = out / ".staging"
    for split, label in {(item["split"], item["label"]) for item in kept}:
        (out / split / label).mkdir(parents=True, exist_ok=True)
    for item in kept:
        item["file"] = place(item, str(staging), str(out), PREPARED_SUFFIXES[image_format])
    shutil.rmtree(staging)


def write_lists(out: Path, kept: list[dict], excluded: list[dict]) -> None:
    """manifest.csv (each prepared image: split, class, hashes), excluded.csv (each file left out, why)."""
    write_csv(out / "manifest.csv", MANIFEST_FIELDS, with_class(sorted(kept, key=order)))
    write_csv(out / "excluded.csv", EXCLUDED_FIELDS, with_class(excluded), spreadsheet=True)
