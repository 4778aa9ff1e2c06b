"""Where the MLflow store is and how it is reached: the tracking URI (recorded relative to the repository),
a server probed with a timeout, a local store created once under a file lock, and the experiment."""

from __future__ import annotations

import fcntl
import logging
import os
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.provenance import ui_links
from imgcls.provenance.relocation import StoreMoved, check_not_moved

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("tracking")


class StoreError(RuntimeError):
    """The MLflow store cannot be used (unreachable, damaged, moved); the message says which and how to fix
    it.
    """


def repo_root() -> Path:
    """The user's repository: DVC_ROOT when DVC runs us (also for `dvc exp run --temp/--queue`)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def default_uri() -> str:
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def portable_uri(uri: str, root: Path | None = None) -> str:
    """The URI to record in files that travel with the repo: a store inside the repository is written
    relative to it (`sqlite:///mlflow.db`), so a copy of the repo checks its own store."""
    root = (root or repo_root()).resolve()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if path.is_absolute() and path.resolve().is_relative_to(root):
            return f"sqlite:///{path.resolve().relative_to(root).as_posix()}"
    return uri


def resolve_uri(recorded: str, root: Path) -> str:
    """A recorded URI made usable from `root` (the inverse of `portable_uri`)."""
    if recorded.startswith("sqlite:///") and not Path(recorded[len("sqlite:///") :]).is_absolute():
        return f"sqlite:///{(root / recorded[len('sqlite:///') :]).resolve()}"
    return recorded


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@contextmanager
def store_lock(uri: str):
    """Serialise first use of a local sqlite store: two pipelines creating or migrating it at once corrupt
    it. Remote servers handle their own concurrency."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def probe_server(uri: str, timeout_s: float) -> None:
    """Fail within `timeout_s` when an HTTP tracking server does not answer (MLflow's own client would retry
    for minutes before saying so)."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as answer:
            answer.read(64)
    except (OSError, urllib.error.URLError) as error:
        raise StoreError(
            f"MLflow tracking server {uri} does not answer ({error}; gave up after "
            f"{time.monotonic() - start:.0f} s, tracking.timeout={timeout_s:g}). Start the server, fix "
            "MLFLOW_TRACKING_URI, or unset it to use the local sqlite store"
        ) from error


def connect(timeout_s: float = 15, create: bool = True) -> MlflowClient:
    """Point MLflow at the store and prove it answers, before any expensive work. A local store that does not
    exist is created, unless `create` is false (looking never creates an empty store)."""
    uri = tracking_uri()
    return open_store(uri, timeout_s, create)


def open_store(uri: str, timeout_s: float = 15, create: bool = False) -> MlflowClient:
    """A client for the store at `uri`, proven to answer; StoreError in one line when it cannot be used
    (unreachable, missing, damaged, or a local store whose repository moved)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        probe_server(uri, timeout_s)
    store = sqlite_path(uri)
    if store is not None and not store.is_file() and not create:
        raise StoreError(
            f"the MLflow store {store} does not exist; copy it here or set MLFLOW_TRACKING_URI to where "
            "the runs are"
        )
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
        except Exception as error:  # any failure here means the store is unusable; say which store and why
            hint = (
                f"if {store} is damaged, move it away (a new store is created) or restore it"
                if store
                else "fix MLFLOW_TRACKING_URI or unset it to use the local sqlite store"
            )
            raise StoreError(
                f"MLflow tracking store {uri} cannot be used ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:300]}); {hint}"
            ) from None
    if store is not None and store.resolve().parent == repo_root():
        try:
            check_not_moved(store)
        except StoreMoved as error:
            raise StoreError(str(error)) from None
    return client


EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",  # a model-training experiment
    **ui_links.VIEW_TAG,
}  # the runs table with the headline figures as columns (imgcls.provenance.ui_links)


def experiment_id(client: MlflowClient, name: str) -> str:
    """Get or create experiment `name` (safe when two pipelines race to create it); local stores keep
    artifacts beside the db, not in a temp copy. The experiment is marked as model training, so the MLflow UI
    shows its runs table and charts (MLflow 3 otherwise opens an unmarked experiment on GenAI tracing); a kind
    someone set already is kept."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    location = (repo_root() / "mlartifacts").as_uri() if uri == default_uri() else None
    with store_lock(uri):
        for _ in range(3):
            experiment = client.get_experiment_by_name(name)
            if experiment and experiment.lifecycle_stage == "deleted":
                raise ValueError(
                    f"MLflow experiment '{name}' (train.experiment) is deleted in {uri}; restore it "
                    f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or "
                    "choose another name"
                )
            if experiment:
                for key, value in EXPERIMENT_TAGS.items():
                    if key not in experiment.tags:
                        client.set_experiment_tag(experiment.experiment_id, key, value)
                return experiment.experiment_id
            try:
                return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                time.sleep(0.2)  # another process created it between our get and create: get it again
    raise RuntimeError(f"could not get or create MLflow experiment '{name}' in {uri}")


# ---- one MLflow run per model: its lifecycle and who may change its status ----
