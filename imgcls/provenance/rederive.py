"""Re-derive a model from its card: a clean git worktree at the card's commit, the card's params, the inputs
fetched by their DVC hashes (the repository's DVC cache, else its remotes), and the pipeline run there up to
export against an MLflow store of its own. Used by `python -m stages.audit`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml


class MissingInput(RuntimeError):
    """An input the card names is in no DVC cache or remote, or cannot be put in place; says which."""


def run(command: list[str], cwd: Path, timeout: float, log: Path | None = None, env=None) -> int:
    """Run a command to its end, bounded; its output goes to `log` (appended) or is dropped. Past `timeout`
    (124) or on Ctrl-C, the command and every process under it (the stages `dvc repro` runs) are killed."""
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            return 124
        except KeyboardInterrupt:
            os.killpg(process.pid, signal.SIGKILL)
            raise


def make_worktree(root: Path, commit: str, where: Path) -> Path:
    """A clean checkout of `commit` at `where`, sharing the repository's git objects."""
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise MissingInput(f"the card's git commit {commit[:80]!r} is not a commit id: nothing to check out")
    result = subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(where), commit],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode:
        raise MissingInput(f"cannot check out commit {commit} in {root}: {result.stderr.strip()[:300]}")
    return where


def remove_worktree(root: Path, where: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(where)], cwd=root, capture_output=True, timeout=300
    )
    shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True, timeout=60)


def dvc_cache(root: Path) -> Path:
    """The repository's DVC cache folder, as its DVC config sets it."""
    result = subprocess.run(["dvc", "cache", "dir"], cwd=root, capture_output=True, text=True, timeout=120)
    return (
        Path(result.stdout.strip())
        if result.returncode == 0 and result.stdout.strip()
        else root / ".dvc/cache"
    )


def share_cache(root: Path, tree: Path) -> Path:
    """Point the worktree's DVC at the repository's cache (and its local remote settings): inputs come from
    there, and what is re-derived bit for bit adds nothing to it."""
    local = root / ".dvc" / "config.local"
    if local.is_file():
        shutil.copy(local, tree / ".dvc" / "config.local")
    cache = dvc_cache(root)
    if run(["dvc", "config", "--local", "cache.dir", str(cache)], tree, 120):
        raise MissingInput(f"cannot point {tree}'s DVC at the cache {cache}")
    return cache


def tracked_by(tree: Path, path: str) -> Path | None:
    """The .dvc file whose output is `path` or holds it."""
    listed = subprocess.run(["git", "ls-files", "-z", "*.dvc"], cwd=tree, capture_output=True, timeout=120)
    target = Path(path)
    for name in listed.stdout.decode().split("\0"):
        if not name:
            continue
        entry = yaml.safe_load((tree / name).read_text()) or {}
        for out in entry.get("outs", []):
            out_path = Path(name).parent / out.get("path", "")
            if target == out_path or out_path in target.parents:
                return tree / name
    return None


def fetch_inputs(tree: Path, card: dict, cache: Path, log: Path) -> list[str]:
    """Put every input the card's params read in place in the worktree: git already has those it tracks;
    the others are checked out of the DVC cache by their .dvc file, else pulled from a remote. Returns a line
    per input; raises MissingInput naming one that is nowhere."""
    params = card["params"]  # as the card's commit read them: today's code may know other keys
    source = params["pretrain"]["source"]
    named = {
        "prepare.data": params["prepare"]["data"],
        "prepare.test_data": params["prepare"]["test_data"],
        "pretrain.data": params["pretrain"]["data"] if source == "dataset" else None,
        "pretrain.file": params["pretrain"].get("file") if source == "file" else None,
    }
    lines = []
    for key, path in named.items():
        if not path:
            continue
        if not (tree / path).resolve().is_relative_to(tree.resolve()):
            lines.append(f"{key} = {path}: outside the repository, read where it is (its hash is compared)")
            continue
        if (tree / path).exists():
            lines.append(f"{key} = {path}: in git at the card's commit")
            continue
        dvc_file = tracked_by(tree, path)
        if dvc_file is None:
            raise MissingInput(
                f"input {key} = {path} is neither in git nor tracked by a .dvc file at the card's commit: "
                "nothing records its content, so the model cannot be re-derived from it"
            )
        name = dvc_file.relative_to(tree).as_posix()
        if run(["dvc", "checkout", "-q", name], tree, 3600, log) == 0 and (tree / path).exists():
            lines.append(f"{key} = {path}: checked out of the DVC cache {cache} by {name}")
            continue
        if run(["dvc", "pull", "-q", name], tree, 3600, log) == 0 and (tree / path).exists():
            lines.append(f"{key} = {path}: pulled from a DVC remote by {name}")
            continue
        remotes = subprocess.run(
            ["dvc", "remote", "list"], cwd=tree, capture_output=True, text=True, timeout=120
        )
        names = (
            ", ".join(line.split()[0] for line in remotes.stdout.splitlines() if line.strip()) or "none set"
        )
        raise MissingInput(
            f"input {key} = {path} ({name}) is missing from the DVC cache {cache} and from every remote "
            f"({names}): restore it there (`dvc push` from a copy that has it), then audit again"
        )
    return lines


def reproduce(tree: Path, card: dict, log: Path, timeout: float) -> float:
    """Run the pipeline up to export in the worktree with the card's params, every stage run (no outputs
    restored from DVC's run cache), against an MLflow store of the worktree's own. Returns the seconds."""
    (tree / "params.yaml").write_text(yaml.safe_dump(card["params"], sort_keys=False))
    env = {key: value for key, value in os.environ.items() if not key.startswith("DVC_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tree / 'mlflow.db'}"  # never the team's store or registry
    start = time.perf_counter()
    code = run(["dvc", "repro", "--force", "--no-run-cache", "export"], tree, timeout, log, env)
    if code:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        why = "timed out" if code == 124 else f"failed (exit {code})"
        raise RuntimeError(f"the re-derivation {why}; the last lines of {log}:\n" + "\n".join(tail))
    return time.perf_counter() - start
