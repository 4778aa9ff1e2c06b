"""Stage prepare: a user's ImageFolder -> decoded, resized, deduplicated train/val/test ImageFolders."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from imgcls.config import layout
from imgcls.data.decoding import decode_all, earlier, record_hashes, stage_missing, write_shaping
from imgcls.data.preparation import (
    check_inputs,
    order,
    place_all,
    refuse_bad_files,
    scan_all,
    select,
    summarize,
    write_lists,
)
from imgcls.files import replace_folder, write_json
from stages.entry import StageContext, stage_main

log = logging.getLogger("prepare")


def run(context: StageContext) -> dict:
    """Scan, decode, deduplicate and split `prepare.data` (the test split is `prepare.test_data` when that is
    a separate folder) into data/prepared, which replaces the previous one only when it is whole; only files
    the previous one did not hold are decoded. Returns the counts written to metrics."""
    cfg, start = context.params.prepare, time.perf_counter()
    folders = check_inputs(cfg)
    candidates, skipped, classes = scan_all(folders, cfg.follow_symlinks)
    known = earlier(Path(layout.PREPARED), cfg)  # what the last prepare made, if made as cfg makes it
    with replace_folder(layout.PREPARED) as out:
        decoded, bad = decode_all(candidates, out / ".staging", cfg, known)
        refuse_bad_files(bad, cfg.on_bad_file)
        kept, left_out, dropped_classes = select(decoded, classes, cfg)
        stage_missing(kept, candidates, out / ".staging", cfg)
        place_all(kept, out, cfg.format)
        excluded = sorted(skipped + bad + left_out, key=order)
        write_lists(out, kept, excluded)
        write_shaping(out, cfg)
    record_hashes(decoded + bad, kept, Path(layout.PREPARED).absolute())  # the next reads only what changed
    # `data` names the folder: every row of `dvc exp show` says which data its metrics came from
    metrics = {"data": cfg.data, **summarize(kept, excluded, len(candidates) + len(skipped))}
    report = {
        "counts": metrics.pop("counts"),
        "excluded_by_kind": metrics.pop("excluded_by_kind"),
        "dropped_classes": dropped_classes,
    }
    write_json(layout.PREPARE_METRICS, metrics)  # headline counts: what `dvc exp show` compares
    write_json(layout.PREPARE_REPORT, report)
    log.info(
        "prepared %d images (%d excluded) from %s in %.1f s; %d of %d readable files reused from the last %s",
        metrics["included"],
        metrics["excluded"],
        " and ".join(str(f) for f in folders.values()),
        time.perf_counter() - start,
        sum(bool(item.get("reused")) for item in decoded),
        len(decoded) + len(bad),
        layout.PREPARED,
    )
    return metrics | report


def main() -> None:
    stage_main(run, computes=False)


if __name__ == "__main__":
    main()
