"""What ties a result to what made it, as plain values: dvc.lock's hashes and library versions.
No MLflow here: provenance.runs records these; the model card and lineage compare them."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import yaml

LIBRARIES = ("torch", "torchvision", "numpy", "pillow", "scikit-learn", "mlflow", "dvc")


def dvc_lock_hashes(root: Path | None = None) -> dict:
    """{stage: {path: md5}} for every dep and out in this copy's dvc.lock (empty before the first run)."""
    lock = (root or Path.cwd()) / "dvc.lock"
    return lock_hashes(lock.read_text() if lock.is_file() else None)


def lock_hashes(text: str | None) -> dict:
    """{stage: {path: md5}} for every dep and out of a dvc.lock's text (empty for none)."""
    stages = (yaml.safe_load(text or "") or {}).get("stages", {})
    return {
        name: {
            entry["path"]: entry.get("md5", "") for kind in ("deps", "outs") for entry in stage.get(kind, [])
        }
        for name, stage in stages.items()
    }


def environment() -> dict:
    """Library versions, Python and OS (the machine and its kernels: runtime.fingerprint)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "not installed"
    versions["version.python"] = platform.python_version()
    versions["platform"] = platform.platform()
    return versions
