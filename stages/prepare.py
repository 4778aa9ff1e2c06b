"""Stage prepare: a user's ImageFolder -> decoded, resized, deduplicated train/val/test ImageFolders."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from stages.cli import stage_main
from stages.imagefolder import BadImage, Candidate, decode_image, resize_short_side, scan
from stages.outputs import write_csv, write_json
from stages.params import Params, PrepareParams
from stages.splits import SPLITS, assign_splits, check_class_sizes, deduplicate

log = logging.getLogger("prepare")
MANIFEST_FIELDS = ["source", "class", "split", "sha256", "file", "width", "height"]
EXCLUDED_FIELDS = ["source", "class", "kind", "reason", "sha256"]


def run(params: Params) -> dict:
    """Scan, decode, deduplicate and split `prepare.data`; returns the counts written to metrics."""
    cfg, start = params.prepare, time.perf_counter()
    root, out = check_paths(cfg)
    candidates, skipped, classes = scan(root, cfg.follow_symlinks)
    excluded = [vars(e) for e in skipped]
    staging = out / ".staging"
    staging.mkdir(parents=True)
    decoded, bad = decode_all(candidates, staging, cfg)
    if bad and cfg.on_bad_file == "fail":
        write_csv(out / "excluded.csv", EXCLUDED_FIELDS, with_class(sorted(excluded + bad, key=lambda e: e["source"])))
        listing = "\n  ".join(f"{b['source']}: {b['reason']}" for b in bad)
        raise ValueError(f"{len(bad)} unusable image(s) in {root} (prepare.on_bad_file: fail), listed in "
                         f"{out / 'excluded.csv'}:\n  {listing}\n"
                         "Fix or remove them, or set prepare.on_bad_file: skip to report and leave them out")
    kept, duplicates = deduplicate(decoded, cfg.on_conflict)
    kept, small, dropped_classes = check_class_sizes(kept, classes, cfg.min_per_class, cfg.small_classes)
    for item, split in zip(kept, assign_splits(kept, cfg.val_fraction, cfg.test_fraction, cfg.seed)):
        item["split"] = split
        item["file"] = place(item, staging, out)
    shutil.rmtree(staging)
    excluded = sorted(excluded + bad + duplicates + small, key=lambda e: e["source"])
    write_csv(out / "manifest.csv", MANIFEST_FIELDS, with_class(sorted(kept, key=lambda i: i["source"])))
    write_csv(out / "excluded.csv", EXCLUDED_FIELDS, with_class(excluded))
    metrics = summarize(kept, excluded, len(candidates) + len(skipped))
    metrics["dropped_classes"] = dropped_classes
    write_json(cfg.metrics, metrics)
    log.info("prepared %d images (%d excluded) from %s in %.1f s", metrics["included"],
             metrics["excluded"], root, time.perf_counter() - start)
    return metrics


def check_paths(cfg: PrepareParams) -> tuple[Path, Path]:
    """Fail before any work on a missing/empty input, and never let the output touch the input."""
    root, out = Path(cfg.data).absolute(), Path(cfg.out).absolute()
    if not root.exists():
        raise FileNotFoundError(f"prepare.data={cfg.data} does not exist; point it at a folder with one "
                                "sub-folder of images per class")
    if not root.is_dir():
        raise NotADirectoryError(f"prepare.data={cfg.data} is a file; it must be a folder with one "
                                 "sub-folder of images per class")
    if not any(root.iterdir()):
        raise ValueError(f"prepare.data={cfg.data} is empty; put one sub-folder of images per class in it")
    real_root, real_out = root.resolve(), out.resolve()
    if real_out.is_relative_to(real_root) or real_root.is_relative_to(real_out):
        raise ValueError(f"prepare.out={cfg.out} and prepare.data={cfg.data} overlap; the input folder is "
                         "never written to, so choose an output folder outside it")
    if out.exists():
        shutil.rmtree(out)  # our own output; DVC removes it too before running the stage
    return root, out


def decode_all(candidates: list[Candidate], staging: Path, cfg: PrepareParams) -> tuple[list[dict], list[dict]]:
    """Hash, decode and resize every candidate in parallel; (usable items, bad files with reasons)."""
    workers = cfg.workers or os.cpu_count() or 1
    jobs = [(c.path, staging, cfg.image_size, cfg.min_size) for c in candidates]
    if workers == 1 or len(jobs) < 64:
        results = [decode_one(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(decode_one, *zip(*jobs), chunksize=32))
    usable, bad = [], []
    for candidate, result in zip(candidates, results):
        item = {"source": candidate.source, "label": candidate.label, **result}
        (bad if "reason" in result else usable).append(item)
    return usable, bad


def decode_one(path: Path, staging: Path, image_size: int, min_size: int) -> dict:
    """One input file -> staged upright RGB PNG named by content hash, or the reason it is unusable."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return {"kind": "unreadable", "reason": f"cannot read the file: {error}", "sha256": ""}
    sha = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, min_size)
    except BadImage as error:
        return {"kind": error.kind, "reason": str(error), "sha256": sha}
    staged = staging / f"{sha}.png"
    if not staged.exists():
        temporary = staging / f"{sha}.{os.getpid()}.tmp"
        resize_short_side(image, image_size).save(temporary, format="PNG")
        os.replace(temporary, staged)
    return {"sha256": sha, "width": image.size[0], "height": image.size[1]}


def place(item: dict, staging: Path, out: Path) -> str:
    """Move the staged image to <out>/<split>/<class>/<stem>-<sha prefix>.png; return it relative to out."""
    relative = Path(item["split"]) / item["label"] / f"{Path(item['source']).stem}-{item['sha256'][:10]}.png"
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / f"{item['sha256']}.png", out / relative)
    return relative.as_posix()


def summarize(kept: list[dict], excluded: list[dict], input_files: int) -> dict:
    counts = {s: dict(sorted(Counter(i["label"] for i in kept if i["split"] == s).items())) for s in SPLITS}
    assert len(kept) + len(excluded) == input_files, "every input file is either included or excluded"
    return {"input_files": input_files, "included": len(kept), "excluded": len(excluded),
            "classes": len({i["label"] for i in kept}),
            "split_sizes": {s: sum(c.values()) for s, c in counts.items()},
            "counts": counts, "excluded_by_kind": dict(sorted(Counter(e["kind"] for e in excluded).items()))}


def with_class(rows: list[dict]) -> list[dict]:
    """The CSV column is `class` (a Python keyword, so `label` inside the code)."""
    return [{"class": row["label"], **row} for row in rows]


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
