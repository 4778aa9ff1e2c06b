"""The one place that talks to MLflow, git and dvc.lock: where runs go and what ties them together."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

# Changes that do not make a tree "dirty": the pipeline's own outputs, dvc.lock and the .gitignore files
# DVC writes for them, and params.yaml, whose every value is logged to MLflow and hashed (so
# `dvc exp run -S ...` experiments stay traceable).
NOT_DIRTY = ("dvc.lock", "params.yaml")
LIBRARIES = ("torch", "torchvision", "numpy", "pillow", "scikit-learn", "mlflow", "dvc")


def repo_root() -> Path:
    """The user's repository: DVC_ROOT when DVC runs us (also for `dvc exp run --temp/--queue`)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def default_uri() -> str:
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def connect() -> MlflowClient:
    """Point MLflow at the store and prove it answers, before any expensive work."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # any failure here means the store is unusable; say which store
        raise RuntimeError(f"MLflow tracking store {uri} cannot be reached ({type(error).__name__}: {error}). "
                           "Fix MLFLOW_TRACKING_URI or unset it to use the local sqlite store") from error
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """Get or create experiment `name`; local stores keep artifacts beside the db, not in a temp copy."""
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    location = None
    if tracking_uri() == default_uri():  # (mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI)
        location = (repo_root() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(data: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1}: the same key as in params.yaml."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_epoch_metrics(client: MlflowClient, run_id: str, epoch: int, values: dict) -> None:
    """All of one epoch's metrics in one batched call (per-metric calls cost ~7 ms each)."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in values.items()])


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
    dirty = [p for p in changed if not p.strip('"').rstrip("/").startswith(skip) and not p.endswith(".gitignore")]
    return {"git_commit": commit or "unknown (not a git repository)", "git_dirty": bool(dirty) or not commit,
            "git_dirty_paths": dirty[:20]}


def dvc_lock_hashes(root: Path | None = None) -> dict:
    """{stage: {path: md5}} for every dep and out in this copy's dvc.lock (empty before the first run)."""
    lock = (root or Path.cwd()) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {name: {entry["path"]: entry.get("md5", "") for kind in ("deps", "outs")
                   for entry in stage.get(kind, [])}
            for name, stage in stages.items()}


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def environment() -> dict:
    """Library versions, Python and machine: what a reproduction must match."""
    import torch  # imported here: the rest of this module must not need torch
    versions = {}
    for name in LIBRARIES:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "not installed"
    versions["version.python"] = platform.python_version()
    versions["platform"] = platform.platform()
    if torch.cuda.is_available():
        versions["version.cuda"] = torch.version.cuda or ""
        versions["version.cudnn"] = str(torch.backends.cudnn.version())
        versions["gpu"] = torch.cuda.get_device_name()
    return versions
