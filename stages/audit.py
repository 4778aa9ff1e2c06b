"""Re-derive a model from its card and say, field by field, whether it came out the same.

Usage: python -m stages.audit [models/export | models:/NAME/VERSION] [--keep] [--timeout 21600]   (from the
repository root; not a pipeline stage: it re-runs the pipeline elsewhere; docs/reproducibility.md)

1. Reads the card (the export folder's, or the registered version's artifacts) and, before any work, checks it
   like `python -m imgcls lineage`: files, params hash, commit, MLflow run, registered version.
2. Makes a clean git worktree at the card's commit in a temporary folder, writes the card's params there, and
   puts the inputs in place by their DVC hashes (git, this repository's DVC cache, else a DVC remote).
3. Runs `dvc repro --force --no-run-cache export` there, against an MLflow store of its own, and compares
   every field of the two cards. Exit 0: re-derived bit for bit; 1: not; 2: cannot audit (a check in 1 fails,
   an input is missing everywhere); 3: the card's runtime (a GPU, unpinned kernels) promises no bits, and the
   re-derivation agrees within the test set's 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from imgcls.config import layout
from imgcls.provenance import audit, rederive


def audit_model(model: str, root: Path, keep: bool, timeout: float) -> int:
    """The audit, printed; returns the exit code. Its scratch folder is removed unless `keep` or the
    re-derivation ran and did not come out the same (its log is there)."""
    scratch = Path(tempfile.mkdtemp(prefix="audit-"))
    code = None
    try:
        code = audit_in(model, root, keep, timeout, scratch)
        return code
    finally:
        if not keep and (code in (0, 2) or not (scratch / "rederive.log").exists()):
            shutil.rmtree(scratch, ignore_errors=True)


def audit_in(model: str, root: Path, keep: bool, timeout: float, scratch: Path) -> int:
    folder, registered = audit.card_folder(model, scratch)
    card_path = folder / "model_card.json"
    print(f"audit of {model}: card {card_path}")
    links = audit.precheck(folder, root, registered)
    for name, ok, detail in links:
        print(f"  {'ok    ' if ok else 'BROKEN'} {name}: {detail}")
    broken = [name for name, ok, _ in links if not ok]
    if broken:
        print(f"VERDICT cannot audit: {', '.join(broken)} broken, checked before any work (exit 2)")
        return 2
    card = json.loads(card_path.read_text(encoding="utf-8"))
    commit = card["git"]["git_commit"]
    tree, log = scratch / "worktree", scratch / "rederive.log"
    print(f"re-deriving at commit {commit[:12]} in {tree} (log: {log})")
    try:
        rederive.make_worktree(root, commit, tree)
        cache = rederive.share_cache(root, tree)
        for entry in rederive.fetch_inputs(tree, card, cache, log):
            print(f"  {entry}")
        seconds = rederive.reproduce(tree, card, log, timeout)
        print(f"  dvc repro --force --no-run-cache export: {seconds:.0f} s")
        derived = json.loads((tree / layout.EXPORT / "model_card.json").read_text(encoding="utf-8"))
    except rederive.MissingInput as error:
        print(f"VERDICT cannot audit: {error} (exit 2)")
        return 2
    finally:
        if not keep:
            rederive.remove_worktree(root, tree)
    rows = audit.compare(card, derived)
    for row in audit.shown(rows):
        print(audit.line(row))
    code, summary = audit.verdict(card, derived, rows)
    print(summary + f" (exit {code})")
    return code


def argument_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests/test_docs.py parses every command the docs show with it)."""
    parser = argparse.ArgumentParser(prog="python -m stages.audit", description=__doc__.splitlines()[0])
    parser.add_argument(
        "model",
        nargs="?",
        default=layout.EXPORT,
        help="export folder (models/export) or models:/NAME/VERSION",
    )
    parser.add_argument("--keep", action="store_true", help="keep the worktree (its path is printed)")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds the re-run may take")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    try:
        return audit_model(args.model, Path.cwd().resolve(), args.keep, args.timeout)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"VERDICT cannot audit: {error} (exit 2)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
