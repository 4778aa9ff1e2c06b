"""The repository's own MLflow store (mlflow.db, artifacts in mlartifacts/) after the repository moved.

MLflow records artifact locations as absolute paths, and has no call to change them. After `mv repo repo2`,
models:/ URIs point at the old folder (gone, or another copy's), and new runs would write there. Every user of
the store checks first (`check_not_moved`) and says, in one line, to run the repair, which rewrites the old
folder into the new one in the store's own tables (sqlite, in one transaction)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

ARTIFACTS = "mlartifacts"
# Every column of MLflow 3's sqlite schema that holds an absolute artifact location (tables missing in other
# versions are skipped).
LOCATIONS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
    "workspaces": ("default_artifact_root",),
}
REPAIR = "python -m imgcls lineage --relocate-store"


class StoreMoved(RuntimeError):
    """The store records artifacts in another copy of the repository."""


def recorded_roots(db: Path) -> set[Path]:
    """The repository folders whose mlartifacts/ the store's experiments point at."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT artifact_location FROM experiments").fetchall()
    roots = set()
    for (location,) in rows:
        path = Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)
        if path.name == ARTIFACTS:
            roots.add(path.parent)
    return roots


def check_not_moved(db: Path) -> None:
    """Raise StoreMoved when the store beside this repository (root/mlflow.db) records another root's
    artifacts folder."""
    root = db.parent.resolve()
    others = sorted(str(r) for r in recorded_roots(db) if r.resolve() != root)
    if others:
        raise StoreMoved(
            f"the MLflow store {db} keeps its artifacts in {others[0]}/{ARTIFACTS}, but this repository "
            f"is {root} (moved or copied since): run `{REPAIR}` here once to point the store at "
            f"{root / ARTIFACTS}"
        )


def relocate(db: Path) -> dict[str, int]:
    """Point each location under another root's mlartifacts/ to this root's: {table.column: rows changed}."""
    root = db.parent.resolve()
    changed: dict[str, int] = {}
    with sqlite3.connect(db) as connection:  # one transaction: all of it or none
        for old in sorted(recorded_roots(db)):
            if old.resolve() == root:
                continue
            for before, after in ((old.as_uri() + "/", root.as_uri() + "/"), (f"{old}/", f"{root}/")):
                for table, columns in LOCATIONS.items():
                    present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                    for column in columns if present else ():
                        if column not in present:
                            continue
                        cursor = connection.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                            f"WHERE substr({column}, 1, ?) = ?",
                            (after, len(before) + 1, len(before), before),
                        )
                        if cursor.rowcount:
                            key = f"{table}.{column}"
                            changed[key] = changed.get(key, 0) + cursor.rowcount
    return changed


def relocate_store(root: Path) -> None:
    """Rewrite the artifact locations of root/mlflow.db to root/mlartifacts (imgcls.provenance.relocation)."""
    store = root / "mlflow.db"
    if not store.is_file():
        print(f"no MLflow store at {store}: nothing to relocate")
        return
    changed = relocate(store)
    print(
        f"{store}: "
        + (
            ", ".join(f"{n} {k}" for k, n in changed.items()) + f" rewritten to {root / 'mlartifacts'}"
            if changed
            else "already points here"
        )
        + "\n"
    )
