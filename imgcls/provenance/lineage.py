"""Trace an exported model back to its data, weights, params, code and MLflow run, verifying each link.

Usage: python -m imgcls lineage [export dir | file inside it] [--relocate-store]   (from the repository root)
Prints the chain; exits 1 naming every link that does not hold. After the repository moved, `--relocate-store`
first points its MLflow store at the new folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from imgcls.config import layout
from imgcls.config.params import params_hash
from imgcls.export.card import dvc_hashes
from imgcls.files import sha256_file
from imgcls.provenance import registry, store
from imgcls.provenance.git import train_code_unchanged
from imgcls.provenance.relocation import relocate_store


def trace(export_dir: Path, root: Path) -> list[tuple[str, bool, str]]:
    """[(link, holds, detail)] from the model file down to the MLflow registry."""
    card_path = export_dir / "model_card.json"
    if not card_path.is_file():
        return [("model card", False, f"{card_path} not found: is {export_dir} an export folder?")]
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        # the params as the card's own code read them: today's code may know keys added since, so they are
        # not validated again here (their hash is checked); what lineage reads must be there
        prepare = card["params"]["prepare"]
        if not isinstance(prepare["data"], str) or not isinstance(prepare["test_data"], str):
            raise TypeError("params.prepare.data and params.prepare.test_data must be paths")
        for key in ("model", "dvc", "git", "mlflow", "params_sha256"):
            card[key]  # noqa: B018 - a card without any of these cannot be traced
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        kind = "empty" if not card_path.stat().st_size else type(error).__name__
        return [
            (
                "model card",
                False,
                f"{card_path} is not a readable model card ({kind}: {str(error)[:120]}); "
                "re-create it with `dvc repro export` or restore it from DVC (`dvc checkout`)",
            )
        ]
    links = [
        check_files(export_dir, root, card),
        check_lock(root, card),
        check_workspace(root),
        check_params(card),
        check_commit(root, card),
    ]
    links += check_mlflow(card, sha256_file(card_path), root)
    return links


def check_files(export_dir: Path, root: Path, card: dict) -> tuple[str, bool, str]:
    broken = []
    for name, expected in card["model"]["files"].items():
        path = root / name if "/" in name else export_dir / name
        if not path.is_file():
            broken.append(f"{path} is missing (the card records sha256 {expected[:16]}…)")
        elif (actual := sha256_file(path)) != expected:
            broken.append(f"{path} has sha256 {actual[:16]}…, the card says {expected[:16]}…")
    detail = "; ".join(broken) or ", ".join(
        f"{n} sha256 {h[:16]}…" for n, h in card["model"]["files"].items()
    )
    return "model file -> model card", not broken, detail


def check_lock(root: Path, card: dict) -> tuple[str, bool, str]:
    prepare = card["params"]["prepare"]
    lock = dvc_hashes(prepare["data"], prepare["test_data"], root)
    differ = [f"{k}: card {v} vs dvc.lock {lock.get(k)}" for k, v in card["dvc"].items() if lock.get(k) != v]
    return "model card -> dvc.lock", not differ, "; ".join(differ) or f"{len(card['dvc'])} hashes agree"


def check_workspace(root: Path) -> tuple[str, bool, str]:
    """DVC recomputes the hashes of every dep and output on disk against dvc.lock."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = repo.status(targets=list(layout.STAGES))
    changed = []
    for stage, entries in status.items():
        for entry in entries:
            for kind, paths in entry.items() if isinstance(entry, dict) else []:
                if kind in ("changed deps", "changed outs"):
                    changed += [
                        f"{path}: {state} ({stage})" for path, state in paths.items() if path != "params.yaml"
                    ]
    return (
        "dvc.lock -> data, weights and model on disk",
        not changed,
        "; ".join(changed) or "dvc status: unchanged",
    )


def check_params(card: dict) -> tuple[str, bool, str]:
    recomputed = params_hash(card["params"])
    ok = recomputed == card["params_sha256"]
    detail = f"params_sha256 {recomputed[:16]}…"
    return "model card -> params", ok, detail if ok else f"the card's params hash to {detail}, not as it says"


def check_commit(root: Path, card: dict) -> tuple[str, bool, str]:
    commit = card["git"]["git_commit"]
    found = (
        subprocess.run(
            ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True
        ).returncode
        == 0
    )
    dirty = (
        " (tree was dirty: " + ", ".join(card["git"]["git_dirty_paths"]) + ")"
        if card["git"]["git_dirty"]
        else ""
    )
    return (
        "params -> git commit",
        found,
        (f"{commit}{dirty}" if found else f"commit {commit} is not in {root}"),
    )


def check_mlflow(card: dict, card_sha: str, root: Path) -> list[tuple[str, bool, str]]:
    """The run's tags and the registered version (found by the card's hash) must agree with the card; the run
    must not be deleted, and it must have been trained on code and params the card's commit still holds."""
    from mlflow.exceptions import MlflowException

    uri = os.environ.get("MLFLOW_TRACKING_URI") or store.resolve_uri(card["mlflow"]["tracking_uri"], root)
    info = card["mlflow"]
    try:
        client = store.open_store(uri)
        run = client.get_run(info["run_id"])
        matching, _ = registry.card_versions(client, card, card_sha)
    except store.StoreError as error:  # ours: one line that says how to fix it
        return [("git commit -> MLflow run", False, f"run {info['run_id']} cannot be read: {error}")]
    except (MlflowException, *database_errors()) as error:
        message = " ".join(str(getattr(error, "message", error)).split())[:300]
        return [
            ("git commit -> MLflow run", False, f"run {info['run_id']} cannot be read from {uri}: {message}")
        ]
    tags, train_commit = run.data.tags, card["git"].get("train_commit") or card["git"]["git_commit"]
    same = [
        tags.get("model_card_sha256") == card_sha,
        tags.get("params_sha256") == card["params_sha256"],
        tags.get("git_commit") == train_commit,
    ]
    unchanged, changes = train_code_unchanged(root, train_commit, card["git"]["git_commit"])
    deleted = run.info.lifecycle_stage == "deleted"
    problems = [
        n
        for n, ok in zip(("model_card_sha256 (card edited?)", "params_sha256", "git_commit"), same)
        if not ok
    ]
    detail = (
        f"run {info['run_id']} is deleted in {uri} (restore it: `mlflow runs restore --run-id "
        f"{info['run_id']}`)"
        if deleted
        else "the run's tags disagree with this card: " + ", ".join(problems)
        if problems
        else f"trained at {train_commit[:12]}, exported at {card['git']['git_commit'][:12]}, but {changes}"
        if not unchanged
        else f"run {info['run_id']} ({run.info.status}) in {uri}"
        + (
            f"; trained at {train_commit[:12]}, train's code unchanged at the card's commit"
            if train_commit != card["git"]["git_commit"]
            else ""
        )
    )
    links = [("git commit -> MLflow run", not deleted and all(same) and unchanged, detail)]
    links.append(
        (
            "MLflow run -> registry",
            bool(matching),
            f"{info['name']} version {', '.join(str(v.version) for v in matching)} carries this card's hash"
            if matching
            else f"no complete version of {info['name']} from run {info['run_id']} carries this "
            "card's hash (not registered, or the card was changed)",
        )
    )
    run_file = root / layout.RUN
    if run_file.is_file():
        recorded = json.loads(run_file.read_text())["run_id"]
        links.append(("DVC -> MLflow run", recorded == info["run_id"], f"{layout.RUN} names run {recorded}"))
    return links


def database_errors() -> tuple[type[Exception], ...]:
    """What a damaged sqlite store raises from below MLflow."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError, sqlite3.Error


def argument_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests/test_docs.py parses every command the docs show with it)."""
    parser = argparse.ArgumentParser(prog="python -m imgcls lineage", description=__doc__.splitlines()[0])
    parser.add_argument(
        "model",
        type=Path,
        nargs="?",
        default=Path(layout.EXPORT),
        help="export folder (models/export, the default) or a file inside it",
    )
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="repository root (default: .)")
    parser.add_argument(
        "--relocate-store",
        action="store_true",
        help="point the repository's own MLflow store (mlflow.db) at this folder's mlartifacts/ "
        "after the repository was moved or copied, then verify",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    if args.relocate_store:
        relocate_store(args.repo.resolve())
    export_dir = args.model if args.model.is_dir() else args.model.parent
    links = trace(export_dir.resolve(), args.repo.resolve())
    for name, ok, detail in links:
        print(f"{'ok    ' if ok else 'BROKEN'} {name}: {detail}")
    broken = [name for name, ok, _ in links if not ok]
    summary = f"{len(links) - len(broken)}/{len(links)} links verified"
    print("\n" + summary + (f"; broken: {', '.join(broken)}" if broken else ""))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
