"""What a stage may touch in the repository it runs in, checked before it deletes or writes anything, and
one stage at a time in one workspace."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from imgcls.config import layout
from imgcls.provenance.git import git_tracked


class OutsideWorkspace(ValueError):
    """An output path that would reach beyond what the stage owns."""


def check_outputs(stage: str, root: Path) -> None:
    """Refuse to run `stage` unless every path it writes (imgcls.config.layout) is declared for it in
    dvc.yaml, lies inside the repository once symlinks are resolved, and, where DVC caches it, holds no file
    git tracks."""
    root = root.resolve()
    declared = declared_outputs(root / "dvc.yaml", stage)
    ours = layout.outputs(stage)
    if declared is not None and sorted(declared) != sorted(ours):
        raise OutsideWorkspace(
            f"dvc.yaml declares {sorted(declared)} as the outputs of stage {stage}, but the stage writes "
            f"{sorted(ours)}: DVC deletes what dvc.yaml declares, so the two must be the same. Restore "
            "dvc.yaml's "
            f"outs for {stage} (`git checkout dvc.yaml`)"
        )
    for path in ours:
        where = (root / path).resolve()
        if where == root or not where.is_relative_to(root):
            raise OutsideWorkspace(
                f"{path} resolves to {where}, outside the repository {root} (a symlink on the "
                f"way?): stage {stage} deletes and rewrites it. Remove the link so that {path} "
                "is a plain folder or file inside the repository"
            )
    tracked = git_tracked(root, layout.CACHED[stage])
    if tracked:
        raise OutsideWorkspace(
            f"git tracks {', '.join(tracked[:5])}{' ...' if len(tracked) > 5 else ''}, inside an output of "
            "stage "
            f"{stage} that DVC deletes and rewrites and keeps in its own cache. Take it out of git "
            f"(`git rm -r --cached {tracked[0]}` and commit), or move your own files elsewhere"
        )


def declared_outputs(dvc_yaml: Path, stage: str) -> list[str] | None:
    """The outs, metrics and plots dvc.yaml declares for `stage`; None without a dvc.yaml (a stage run
    outside a pipeline repository, such as a test's folder)."""
    if not dvc_yaml.is_file():
        return None
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    if stage not in stages:
        raise OutsideWorkspace(f"{dvc_yaml} has no stage {stage}; restore it (`git checkout dvc.yaml`)")
    entries = [entry for kind in ("outs", "metrics", "plots") for entry in stages[stage].get(kind) or []]
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries]


class StageBusy(RuntimeError):
    """Another stage process holds the workspace."""


@contextmanager
def one_stage_at_a_time(stage: str, root: Path) -> Iterator[None]:
    """Hold the workspace's stage lock while `stage` runs: a second stage started by hand while `dvc repro`
    runs one (or two by hand) would write the same outputs at once. The lock lives in DVC's own temporary
    folder; `dvc exp run --temp/--queue` copies have their own. No DVC folder, no lock."""
    dvc = root / ".dvc"
    if not dvc.is_dir():
        yield
        return
    (dvc / "tmp").mkdir(exist_ok=True)
    with open(dvc / "tmp" / "stage.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise StageBusy(
                f"stage {holder} is running in this workspace ({root}); wait for it to end, or stop "
                f"it, before running stage {stage}"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{stage} (pid {os.getpid()})")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)
