"""The git repository the pipeline runs in: its commit, and whether the code or data differ from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from imgcls.config.strict_yaml import read_yaml

# Changes that do not make a tree "dirty": the pipeline's own outputs, dvc.lock and the .gitignore files
# DVC writes for them, and params.yaml, whose every value is logged to MLflow and hashed (so
# `dvc exp run -S ...` experiments stay traceable).
NOT_DIRTY = ("dvc.lock", "params.yaml")


def git_state(outputs: tuple[str, ...], root: Path | None = None) -> dict:
    """Commit and dirty flag of the code being run (in a `--temp` experiment: its copy, not DVC_ROOT)."""
    root = root or Path.cwd()

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return result.stdout if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD").strip()
    # porcelain lines are "XY path": the two status columns may be blank, so never strip them
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=all").splitlines()]
    skip = NOT_DIRTY + tuple(o.rstrip("/") for o in outputs)
    dirty = [
        p for p in changed if not p.strip('"').rstrip("/").startswith(skip) and not p.endswith(".gitignore")
    ]
    return {
        "git_commit": commit or "unknown (not a git repository)",
        "git_dirty": bool(dirty) or not commit,
        "git_dirty_paths": dirty[:20],
    }


def check_committed(allow_dirty: bool, outputs: tuple[str, ...]) -> dict:
    """Refuse work that would end in a model made from uncommitted code or data; returns the state."""
    git = git_state(outputs)
    if git["git_dirty"] and not allow_dirty:
        paths = ", ".join(git["git_dirty_paths"]) or "the repository (no commit yet?)"
        raise RuntimeError(
            f"uncommitted changes in {paths}: a registered model must trace back to a commit. "
            "Commit them first (`git add -A && git commit -m ...`), then run `dvc repro`; or set "
            "runtime.allow_dirty: true (the card and the run then record git_dirty: true)"
        )
    return git


def git_tracked(root: Path, paths: tuple[str, ...] | list[str]) -> list[str]:
    """The files git tracks at or under `paths` (relative to `root`); none outside a git repository."""
    if not paths:
        return []
    result = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=root, capture_output=True)
    return (
        [name for name in result.stdout.decode("utf-8", "backslashreplace").split("\0") if name]
        if result.returncode == 0
        else []
    )


def train_code_unchanged(root: Path, trained: str, exported: str) -> tuple[bool, str]:
    """Whether the train stage's definition and its code in git are the same at the commit where the model was
    trained and at the card's (export's) commit: then DVC would not have re-trained, and the run belongs to
    the card's commit too. (Its params are the card's own, checked against the run by their hash.) (bool, what
    differs)."""
    if trained == exported:
        return True, ""

    def show(commit: str, path: str) -> str | None:
        result = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, capture_output=True, text=True)
        return result.stdout if result.returncode == 0 else None

    stages = [
        read_yaml(show(c, "dvc.yaml") or "{}").get("stages", {}).get("train") for c in (trained, exported)
    ]
    if stages[0] is None or stages[0] != stages[1]:
        return False, "the train stage of dvc.yaml differs between them (or a commit is missing)"
    deps = [d for d in stages[1].get("deps", []) if isinstance(d, str) and "$" not in d]
    tracked = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", exported, "--", *deps],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.split()
    changed = subprocess.run(
        ["git", "diff", "--name-only", trained, exported, "--", *tracked],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.split()
    return (False, f"train's code changed between them: {', '.join(changed[:5])}") if changed else (True, "")
