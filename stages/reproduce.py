"""Did this run reproduce the committed reference? Says whether a difference is rounding or a regression.

Usage: python -m stages.reproduce [--rev HEAD]   (after `dvc repro`, from the repository root)

The stage fingerprints (`runtime.fingerprints`) decide the mode:
- exact: reference and run both used the pinned CPU runtime with the same kernels, BLAS branch, threads and
  library versions. The same bits are expected, so every metric must be identical; any difference is a
  regression (or a changed input), never rounding.
- band: the runtimes differ (a GPU, unpinned kernels, other threads or versions), so rounding can move
  training. Data-integrity counts must still be identical; each headline metric must lie inside the
  reference's 95% interval; fragile figures (best epoch, per-class scores, losses) are shown but do not gate.
Exits 1 naming every metric that fails its gate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from stages.params import Params, load_params, parse_params

FINGERPRINTED = ("pretrain", "train", "evaluate")
HEADLINE = ("test_accuracy", "test_f1_macro")  # gated by the reference's interval in band mode


@dataclass(frozen=True)
class Row:
    file: str
    key: str
    old: object
    new: object
    gate: str  # "exact", "band [low, high]" or "report"
    ok: bool


def flatten(data: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}, as `dvc metrics diff` names keys."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_integrity(file: str, key: str, params: Params) -> bool:
    """Counts and sizes that no rounding can move: data in, images seen, test support."""
    if file == params.prepare.metrics:
        return True
    return key in ("images", "classes", "test_images") or key.endswith(".support")


def compare_metrics(old: dict[str, dict], new: dict[str, dict], exact: bool, params: Params) -> list[Row]:
    """One row per metric in either run: {file: metrics} of the reference and of this run."""
    rows = []
    reference_bands = {key: flatten(old.get(params.evaluate.metrics, {})).get(f"{key}_ci95.low") for key in HEADLINE}
    for file in sorted(set(old) | set(new)):
        before, after = flatten(old.get(file, {})), flatten(new.get(file, {}))
        for key in sorted(set(before) | set(after)):
            a, b = before.get(key), after.get(key)
            if exact or is_integrity(file, key, params):
                rows.append(Row(file, key, a, b, "exact", a == b))
            elif file == params.evaluate.metrics and key in HEADLINE and reference_bands[key] is not None:
                low, high = before[f"{key}_ci95.low"], before[f"{key}_ci95.high"]
                inside = isinstance(b, int | float) and low <= b <= high
                rows.append(Row(file, key, a, b, f"band [{low:.4f}, {high:.4f}]", inside))
            else:
                rows.append(Row(file, key, a, b, "report", True))
    return rows


def decide_mode(old_env: dict[str, dict], new_env: dict[str, dict]) -> tuple[bool, list[str]]:
    """(exact comparison applies, why not): exact only if every stage ran the same pinned runtime."""
    from stages.runtime import same_bits_expected
    reasons = []
    for stage in FINGERPRINTED:
        before, after = old_env.get(stage), new_env.get(stage)
        if before is None or after is None:
            reasons.append(f"{stage}: no fingerprint in the {'reference' if before is None else 'run'}")
            continue
        same, differ = same_bits_expected(before, after)
        if not same:
            unpinned = [side for side, env in (("reference", before), ("run", after)) if not env.get("pinned")]
            why = ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in differ)
            reasons.append(f"{stage}: " + "; ".join(filter(None, [
                f"not pinned in the {' and '.join(unpinned)}" if unpinned else "", why])))
    return not reasons, reasons


def report(rows: list[Row], exact: bool, reasons: list[str], old_env: dict, new_env: dict) -> tuple[bool, str]:
    """(reproduced, the text a person reads in the CI log): fingerprints, every metric that changed or gates,
    the mode and why, and one verdict line."""
    failed = [r for r in rows if not r.ok]
    lines = ["Fingerprints, reference -> this run:"]
    for stage in FINGERPRINTED:
        before, after = old_env.get(stage, {}), new_env.get(stage, {})
        lines.append(f"  {stage}: " + ", ".join(
            f"{k}={before.get(k)!r}" + ("" if before.get(k) == after.get(k) else f" -> {after.get(k)!r}")
            for k in ("pinned", "cpu", "cpu_isa", "kernel_isa", "blas", "threads", "device", "gpu", "torch")))
    shown = [r for r in rows if not r.ok or r.old != r.new or r.gate.startswith("band") or r.key in HEADLINE]
    lines += ["", f"{'metric':58} {'reference':>12} {'this run':>12} {'change':>10}  gate"]
    lines += [f"{r.file + ':' + r.key:58} {fmt(r.old):>12} {fmt(r.new):>12} {change(r):>10}  {r.gate}"
              + ("   <-- FAILS" if not r.ok else "") for r in shown]
    lines.append(f"({len(rows) - len(shown)} other metrics identical)")
    names = ", ".join(f"{r.file}:{r.key}" for r in failed)
    if exact:
        lines += ["", "MODE exact: reference and run share the pinned CPU runtime, so the same bits are expected."]
        verdict = (f"reproduced: all {len(rows)} metrics identical" if not failed else
                   f"REGRESSION, not rounding: {len(failed)} metric(s) changed on the same runtime: {names}")
    else:
        moved = sum(1 for r in rows if r.gate == "report" and r.old != r.new)
        lines += ["", "MODE band: the runtimes differ, so rounding can move training results:"]
        lines += [f"  - {reason}" for reason in reasons]
        lines.append("  Integrity counts must be identical and headline metrics inside the reference's 95% interval; "
                     f"{moved} fragile figure(s) moved and do not gate.")
        verdict = ("reproduced within the reference's noise" if not failed else
                   f"NOT reproduced: {len(failed)} metric(s) outside their gate: {names}")
    lines.append(f"VERDICT {verdict}")
    return not failed, "\n".join(lines)


def change(row: Row) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (row.old, row.new))
    return f"{row.new - row.old:+.4g}" if numbers and row.old != row.new else ""


def fmt(value) -> str:
    return "—" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def read_json(text: str | None) -> dict:
    return json.loads(text) if text else {}


def at_rev(rev: str, path: str) -> str | None:
    """A file's text as committed at `rev`, or None if it is not there."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def metric_files(params: Params) -> list[str]:
    return [params.prepare.metrics, params.pretrain.metrics, params.train.metrics, params.evaluate.metrics]


def reference_params_at(rev: str, current: Params) -> Params:
    """The committed params (they name the reference's files); the current ones if those cannot be read."""
    committed = at_rev(rev, "params.yaml")
    try:
        return parse_params(yaml.safe_load(committed), f"{rev}:params.yaml") if committed else current
    except (ValueError, yaml.YAMLError):
        return current


def check(rev: str) -> tuple[bool, str]:
    """Compare the workspace's metrics and fingerprints with those committed at `rev`."""
    params = load_params()
    reference_params = reference_params_at(rev, params)
    old = {f: read_json(at_rev(rev, f)) for f in metric_files(reference_params)}
    new = {f: read_json(Path(f).read_text()) if Path(f).is_file() else {} for f in metric_files(params)}
    folder_old, folder_new = reference_params.runtime.fingerprints, params.runtime.fingerprints
    old_env = {s: read_json(at_rev(rev, f"{folder_old}/{s}.json")) or None for s in FINGERPRINTED}
    new_env = {s: read_json(p.read_text()) if (p := Path(folder_new) / f"{s}.json").is_file() else None
               for s in FINGERPRINTED}
    old_env = {k: v for k, v in old_env.items() if v}
    new_env = {k: v for k, v in new_env.items() if v}
    exact, reasons = decide_mode(old_env, new_env)
    return report(compare_metrics(old, new, exact, params), exact, reasons, old_env, new_env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="git revision holding the reference (default HEAD)")
    args = parser.parse_args(argv)
    reproduced, text = check(args.rev)
    print(text)
    sys.exit(0 if reproduced else 1)


if __name__ == "__main__":
    main()
