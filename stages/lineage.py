"""Trace an exported model back to its data, weights, params, code and MLflow run, verifying each link.

Usage: python -m stages.lineage <export dir | file inside it>   (run from the repository root)
Prints the chain; exits 1 naming every link that does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from stages import tracking
from stages.imagefolder import sha256_file
from stages.model_card import dvc_hashes
from stages.params import parse_params

STAGES = ("prepare", "pretrain", "train", "evaluate", "export")


def trace(export_dir: Path, root: Path) -> list[tuple[str, bool, str]]:
    """[(link, holds, detail)] from the model file down to the MLflow registry."""
    card_path = export_dir / "model_card.json"
    if not card_path.is_file():
        return [("model card", False, f"{card_path} not found: is {export_dir} an export folder?")]
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        parse_params(card["params"], f"{card_path} params")
        for key in ("model", "dvc", "git", "mlflow", "params_sha256"):
            card[key]  # noqa: B018 - a card without any of these cannot be traced
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        kind = "empty" if not card_path.stat().st_size else type(error).__name__
        return [("model card", False, f"{card_path} is not a readable model card ({kind}: {str(error)[:120]}); "
                 "re-create it with `dvc repro export` or restore it from DVC (`dvc checkout`)")]
    links = [check_files(export_dir, root, card), check_lock(root, card), check_workspace(root),
             check_params(card), check_commit(root, card)]
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
    detail = "; ".join(broken) or ", ".join(f"{n} sha256 {h[:16]}…" for n, h in card["model"]["files"].items())
    return "model file -> model card", not broken, detail


def check_lock(root: Path, card: dict) -> tuple[str, bool, str]:
    lock = dvc_hashes(parse_params(card["params"], "model_card.json params"), root)
    differ = [f"{k}: card {v} vs dvc.lock {lock.get(k)}" for k, v in card["dvc"].items() if lock.get(k) != v]
    return "model card -> dvc.lock", not differ, "; ".join(differ) or f"{len(card['dvc'])} hashes agree"


def check_workspace(root: Path) -> tuple[str, bool, str]:
    """DVC recomputes the hashes of every dep and output on disk against dvc.lock."""
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        status = repo.status(targets=list(STAGES))
    changed = []
    for stage, entries in status.items():
        for entry in entries:
            for kind, paths in (entry.items() if isinstance(entry, dict) else []):
                if kind in ("changed deps", "changed outs"):
                    changed += [f"{path}: {state} ({stage})" for path, state in paths.items()
                                if path != "params.yaml"]
    return "dvc.lock -> data, weights and model on disk", not changed, "; ".join(changed) or "dvc status: unchanged"


def check_params(card: dict) -> tuple[str, bool, str]:
    recomputed = tracking.params_hash(card["params"])
    ok = recomputed == card["params_sha256"]
    detail = f"params_sha256 {recomputed[:16]}…"
    return "model card -> params", ok, detail if ok else f"the card's params hash to {detail}, not as it says"


def check_commit(root: Path, card: dict) -> tuple[str, bool, str]:
    commit = card["git"]["git_commit"]
    found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root,
                           capture_output=True).returncode == 0
    dirty = " (tree was dirty: " + ", ".join(card["git"]["git_dirty_paths"]) + ")" if card["git"]["git_dirty"] else ""
    return "params -> git commit", found, (f"{commit}{dirty}" if found else f"commit {commit} is not in {root}")


def check_mlflow(card: dict, card_sha: str, root: Path) -> list[tuple[str, bool, str]]:
    """The run's tags and the registered version (found by the card's hash) must agree with the card."""
    import mlflow
    from mlflow.exceptions import MlflowException
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.resolve_uri(card["mlflow"]["tracking_uri"], root)
    info = card["mlflow"]
    store = tracking.sqlite_path(uri)
    if store is not None and not store.is_file():  # never create an empty store by looking
        return [("git commit -> MLflow run", False, f"the MLflow store {store} does not exist; copy it here or "
                 "set MLFLOW_TRACKING_URI to where the run is")]
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(info["run_id"])
        versions = client.search_model_versions(f"name='{info['name']}' and run_id='{info['run_id']}'")
    except MlflowException as error:
        return [("git commit -> MLflow run", False, f"run {info['run_id']} not found in {uri}: "
                 f"{error.message.splitlines()[0][:200]}")]
    tags = run.data.tags
    same = [tags.get("model_card_sha256") == card_sha, tags.get("params_sha256") == card["params_sha256"],
            tags.get("git_commit") == card["git"]["git_commit"]]
    links = [("git commit -> MLflow run", all(same),
              f"run {info['run_id']} ({run.info.status}) in {uri}" if all(same) else
              "the run's tags disagree with this card: " + ", ".join(
                  n for n, ok in zip(("model_card_sha256 (card edited?)", "params_sha256", "git_commit"), same)
                  if not ok))]
    matching = [v for v in versions if v.tags.get("model_card_sha256") == card_sha and "incomplete" not in v.tags]
    links.append(("MLflow run -> registry", bool(matching),
                  f"{info['name']} version {', '.join(str(v.version) for v in matching)} carries this card's hash"
                  if matching else f"no complete version of {info['name']} from run {info['run_id']} carries this "
                  "card's hash (not registered, or the card was changed)"))
    run_file = root / card["params"]["train"]["run"]
    if run_file.is_file():
        recorded = json.loads(run_file.read_text())["run_id"]
        links.append(("DVC -> MLflow run", recorded == info["run_id"],
                      f"{run_file.relative_to(root)} names run {recorded}"))
    return links


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="export folder (models/export) or a file inside it")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="repository root (default: .)")
    args = parser.parse_args(argv)
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
