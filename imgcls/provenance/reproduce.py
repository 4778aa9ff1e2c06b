"""Did this run reproduce the committed reference? Says whether a difference is rounding or a regression.

Usage: python -m imgcls reproduce [--rev HEAD]   (after `dvc repro`, from the repository root)

The stage fingerprints (metrics/environment/) decide the mode:
- exact: reference and run both used the pinned CPU runtime with the same kernels, BLAS branch, threads and
  library versions. The same bits are expected, so every metric must be identical; any difference is a
  regression (or a changed input), never rounding.
- band: the runtimes differ (a GPU, unpinned kernels, other threads or versions), so rounding can move
  training. Data-integrity counts must still be identical; each headline metric must lie inside the
  reference's 95% interval (test-set noise), widened to mean ± 3 sd of the seed sweep in
  benchmarks/seed_sweep.json (training noise) when that was measured with the reference's params; fragile
  figures (best epoch, per-class scores, losses) are shown but do not gate.
Exits 1 naming every metric that fails its gate.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from imgcls.config import layout
from imgcls.config.params import flatten, load_params
from imgcls.provenance.reference import (
    adopt_command,
    at_rev,
    decide_mode,
    differences,
    lock_at,
    reference_params_at,
    seed_spread,
)

HEADLINE = ("test_accuracy", "test_f1_macro")  # gated by the reference's interval in band mode
GAPS = ("lowest_recall.", "confused_pairs.")  # the evaluate stage's lists of weakest classes and pairs


@dataclass(frozen=True)
class Row:
    file: str
    key: str
    old: object
    new: object
    gate: str  # "exact", "band [low, high]" or "report"
    ok: bool


def is_integrity(file: str, key: str) -> bool:
    """Counts and sizes that no rounding can move: data in, images seen, test support."""
    if file in (layout.PREPARE_METRICS, layout.PREPARE_REPORT):
        return True
    if key.startswith(GAPS):  # which classes are listed there moves with the scores
        return False
    return key in ("images", "classes", "test_images") or key.endswith(".support")


def headline_band(key: str, reference: dict, sweep: dict | None) -> tuple[float, float] | None:
    """Where a headline metric may land when rounding differs: the reference's 95% interval (test-set noise),
    widened to the seed sweep's mean ± 3 sd (training noise) when the sweep was made with these params."""
    low, high = reference.get(f"{key}_ci95.low"), reference.get(f"{key}_ci95.high")
    if low is None or high is None:
        return None
    spread = (sweep or {}).get(key)
    if spread:
        low, high = min(low, spread["mean"] - 3 * spread["sd"]), max(high, spread["mean"] + 3 * spread["sd"])
    return low, high


def compare_metrics(
    old: dict[str, dict], new: dict[str, dict], exact: bool, sweep: dict | None = None
) -> list[Row]:
    """One row per metric in either run: {file: metrics} of the reference and of this run; `sweep` is the
    seed spread ({metric: {mean, sd}}) of the reference's params, if one was measured."""
    rows = []
    for file in sorted(set(old) | set(new)):
        before, after = flatten(old.get(file, {})), flatten(new.get(file, {}))
        for key in sorted(set(before) | set(after)):
            a, b = before.get(key), after.get(key)
            if exact or is_integrity(file, key):
                rows.append(Row(file, key, a, b, "exact", a == b))
            elif file == layout.EVALUATE_METRICS and key in HEADLINE:
                band = headline_band(key, before, sweep)
                if band is None:
                    rows.append(Row(file, key, a, b, "band: the reference has no interval", False))
                    continue
                low, high = band
                inside = isinstance(b, int | float) and low <= b <= high
                rows.append(Row(file, key, a, b, f"band [{low:.4f}, {high:.4f}]", inside))
            else:
                rows.append(Row(file, key, a, b, "report", True))
    return rows


def report(
    rows: list[Row], exact: bool, reasons: list[str], old_env: dict, new_env: dict
) -> tuple[bool, str]:
    """(reproduced, the text a person reads in the CI log): fingerprints, every metric that changed or gates,
    the mode and why, and one verdict line."""
    failed = [r for r in rows if not r.ok]
    lines = []
    lines.append("Fingerprints, reference -> this run:")
    for stage in layout.FINGERPRINTED:
        before, after = old_env.get(stage, {}), new_env.get(stage, {})
        lines.append(
            f"  {stage}: "
            + ", ".join(
                f"{k}={before.get(k)!r}" + ("" if before.get(k) == after.get(k) else f" -> {after.get(k)!r}")
                for k in (
                    "pinned",
                    "cpu",
                    "cpu_isa",
                    "kernel_isa",
                    "onednn_isa",
                    "blas",
                    "threads",
                    "device",
                    "gpu",
                    "torch",
                )
            )
        )
    shown = [r for r in rows if not r.ok or r.old != r.new or r.gate.startswith("band") or r.key in HEADLINE]
    lines += ["", f"{'metric':58} {'reference':>12} {'this run':>12} {'change':>10}  gate"]
    lines += [
        f"{r.file + ':' + r.key:58} {fmt(r.old):>12} {fmt(r.new):>12} {change(r):>10}  {r.gate}"
        + ("   <-- FAILS" if not r.ok else "")
        for r in shown
    ]
    lines.append(f"({len(rows) - len(shown)} other metrics identical)")
    names = ", ".join(f"{r.file}:{r.key}" for r in failed)
    if exact:
        lines += [
            "",
            "MODE exact: reference and run share the pinned CPU runtime, so the same bits are expected.",
        ]
        verdict = (
            f"reproduced: all {len(rows)} metrics identical"
            if not failed
            else f"REGRESSION, not rounding: {len(failed)} metric(s) changed on the same runtime: {names}"
        )
    else:
        moved = sum(1 for r in rows if r.gate == "report" and r.old != r.new)
        lines += ["", "MODE band: the runtimes differ, so rounding can move training results:"]
        lines += [f"  - {reason}" for reason in reasons]
        lines.append(
            "  Integrity counts must be identical; headline metrics must lie in their band (the "
            "reference's 95% interval, widened to the seed sweep's mean ± 3 sd where one was measured "
            "for these params); "
            f"{moved} fragile figure(s) moved and do not gate."
        )
        verdict = (
            "reproduced within the reference's noise"
            if not failed
            else f"NOT reproduced: {len(failed)} metric(s) outside their gate: {names}"
        )
    lines.append(f"VERDICT {verdict}")
    return not failed, "\n".join(lines)


def change(row: Row) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (row.old, row.new))
    return f"{row.new - row.old:+.4g}" if numbers and row.old != row.new else ""


def fmt(value) -> str:
    return "—" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def read_json(text: str | None) -> dict:
    return json.loads(text) if text else {}


# The metrics and the reports behind them: in exact mode every value must be the same.
METRIC_FILES = (
    layout.PREPARE_METRICS,
    layout.PREPARE_REPORT,
    layout.PRETRAIN_METRICS,
    layout.TRAIN_METRICS,
    layout.EVALUATE_METRICS,
    layout.EVALUATE_REPORT,
)


def check(rev: str) -> tuple[bool, str]:
    """Compare the workspace's metrics and fingerprints with those committed at `rev`, when the reference
    there was made from the same data and params; otherwise say what differs and how to adopt these
    results."""
    params = load_params()
    reference_params = reference_params_at(rev, params)
    differ = differences(reference_params, lock_at(rev), params, lock_at(None))
    if differ:
        return True, "\n".join(
            [
                f"The reference committed at {rev} was made from other inputs than these results, "
                "so they are not compared (a new dataset or an experiment is not a failed reproduction):",
                *(f"  {line}" for line in differ),
                "",
                "To make these results the reference (after `dvc repro`), "
                "commit them with their fingerprints:",
                f"  {adopt_command(params)}",
                "",
                f"VERDICT not compared: the reference at {rev} belongs to other data or params",
            ]
        )
    old = {f: read_json(at_rev(rev, f)) for f in METRIC_FILES}
    new = {f: read_json(Path(f).read_text()) if Path(f).is_file() else {} for f in METRIC_FILES}
    old_env = {s: read_json(at_rev(rev, layout.fingerprint(s))) or None for s in layout.FINGERPRINTED}
    new_env = {
        s: read_json(p.read_text()) if (p := Path(layout.fingerprint(s))).is_file() else None
        for s in layout.FINGERPRINTED
    }
    old_env = {k: v for k, v in old_env.items() if v}
    new_env = {k: v for k, v in new_env.items() if v}
    exact, reasons = decide_mode(old_env, new_env)
    sweep = seed_spread(reference_params)
    ok, text = report(compare_metrics(old, new, exact, sweep), exact, reasons, old_env, new_env)
    fallback = new.get(layout.EVALUATE_REPORT, {}).get("calibration", {}).get("temperature_fallback")
    note = (
        f"calibration: the fitted temperature is not used (T = 1 exported): {fallback}\n" if fallback else ""
    )
    return ok, note + text


def argument_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests/test_docs.py parses every command the docs show with it)."""
    parser = argparse.ArgumentParser(prog="python -m imgcls reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="git revision holding the reference (default HEAD)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    reproduced, text = check(args.rev)
    print(text)
    return 0 if reproduced else 1


if __name__ == "__main__":
    sys.exit(main())
