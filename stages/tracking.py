"""The one place that talks to MLflow: where runs go, who may change their status, and the registry."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stages import mlflow_ui
from stages.store_location import StoreMoved, check_not_moved

log = logging.getLogger("tracking")


class StoreError(RuntimeError):
    """The MLflow store cannot be used (unreachable, damaged, moved); the message says which and how to fix it."""


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
        path = Path(uri[len("sqlite:///"):])
        if path.is_absolute() and path.resolve().is_relative_to(root):
            return f"sqlite:///{path.resolve().relative_to(root).as_posix()}"
    return uri


def resolve_uri(recorded: str, root: Path) -> str:
    """A recorded URI made usable from `root` (the inverse of `portable_uri`)."""
    if recorded.startswith("sqlite:///") and not Path(recorded[len("sqlite:///"):]).is_absolute():
        return f"sqlite:///{(root / recorded[len('sqlite:///'):]).resolve()}"
    return recorded


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


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
        raise StoreError(f"MLflow tracking server {uri} does not answer ({error}; gave up after "
                           f"{time.monotonic() - start:.0f} s, tracking.timeout={timeout_s:g}). Start the server, fix "
                           "MLFLOW_TRACKING_URI, or unset it to use the local sqlite store") from error


def connect(timeout_s: float = 15, create: bool = True) -> MlflowClient:
    """Point MLflow at the store and prove it answers, before any expensive work. A local store that does not
    exist is created, unless `create` is false (looking never creates an empty store)."""
    uri = tracking_uri()
    return open_store(uri, timeout_s, create)


def open_store(uri: str, timeout_s: float = 15, create: bool = False) -> MlflowClient:
    """A client for the store at `uri`, proven to answer; StoreError in one line when it cannot be used
    (unreachable, missing, damaged, or a local store whose repository moved)."""
    if uri.startswith(("http://", "https://")):
        probe_server(uri, timeout_s)
    store = sqlite_path(uri)
    if store is not None and not store.is_file() and not create:
        raise StoreError(f"the MLflow store {store} does not exist; copy it here or set MLFLOW_TRACKING_URI to where "
                         "the runs are")
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
        except Exception as error:  # any failure here means the store is unusable; say which store and why
            hint = (f"if {store} is damaged, move it away (a new store is created) or restore it"
                    if store else "fix MLFLOW_TRACKING_URI or unset it to use the local sqlite store")
            raise StoreError(f"MLflow tracking store {uri} cannot be used ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:300]}); {hint}") from None
    if store is not None and store.resolve().parent == repo_root():
        try:
            check_not_moved(store)
        except StoreMoved as error:
            raise StoreError(str(error)) from None
    return client


EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development",  # a model-training experiment
                   **mlflow_ui.VIEW_TAG}  # the runs table with the headline figures as columns (stages.mlflow_ui)


def experiment_id(client: MlflowClient, name: str) -> str:
    """Get or create experiment `name` (safe when two pipelines race to create it); local stores keep
    artifacts beside the db, not in a temp copy. The experiment is marked as model training, so the MLflow UI
    shows its runs table and charts (MLflow 3 otherwise opens an unmarked experiment on GenAI tracing); a kind
    someone set already is kept."""
    uri = tracking_uri()
    location = (repo_root() / "mlartifacts").as_uri() if uri == default_uri() else None
    with store_lock(uri):
        for _ in range(3):
            experiment = client.get_experiment_by_name(name)
            if experiment and experiment.lifecycle_stage == "deleted":
                raise ValueError(f"MLflow experiment '{name}' (train.experiment) is deleted in {uri}; restore it "
                                 f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or "
                                 "choose another name")
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

def run_name(params_sha: str) -> str:
    """Unique and meaningful: the stage that made it, the DVC experiment (or `repro`), the params hash, when."""
    return f"train-{os.environ.get('DVC_EXP_NAME') or 'repro'}-{params_sha[:8]}-{time.strftime('%Y%m%dT%H%M%S')}"


@contextmanager
def run_status(client: MlflowClient, run_id: str):
    """The train stage's run ends FINISHED, KILLED (SIGTERM or Ctrl-C) or FAILED; a SIGKILL leaves it RUNNING
    until `mark_if_orphaned` finds its process gone."""
    try:
        yield
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def process_tags() -> dict:
    return {"process.host": socket.gethostname(), "process.pid": str(os.getpid())}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_if_orphaned(client: MlflowClient, run, found_by: str) -> bool:
    """A RUNNING run whose process (on this host) is gone was killed: say so and mark it KILLED."""
    tags = run.data.tags
    if run.info.status != "RUNNING" or tags.get("process.host") != socket.gethostname():
        return False
    pid = int(tags.get("process.pid", "0") or 0)
    if pid and process_alive(pid) and pid != os.getpid():
        return False
    note = f"marked KILLED by {found_by}: its process {pid} on {tags.get('process.host')} is gone"
    client.set_tag(run.info.run_id, "status_note", note)
    client.set_terminated(run.info.run_id, "KILLED")
    log.warning("MLflow run %s (%s) was left RUNNING: %s", run.info.run_id, run.info.run_name, note)
    return True


def mark_orphaned_runs(client: MlflowClient, experiment: str, found_by: str) -> int:
    """Sweep an experiment for runs left RUNNING by killed processes on this host."""
    runs = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=200)
    return sum(mark_if_orphaned(client, run, found_by) for run in runs)


def continue_run(client: MlflowClient, run_id: str, note: str) -> None:
    """Make a killed train's run RUNNING again under this process (a resumed checkpoint goes on in the run it
    started). A run whose process is still alive is refused: two trainings would write into one run."""
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise RuntimeError(f"the checkpoint's MLflow run {run_id} is not in {tracking_uri()} ({error.message[:200]}); "
                           "delete the checkpoint (train.checkpoint) to start a fresh run") from error
    mark_if_orphaned(client, run, "train")
    if client.get_run(run_id).info.status == "RUNNING":
        raise RuntimeError(f"MLflow run {run_id} is RUNNING in process {run.data.tags.get('process.pid')} on "
                           f"{run.data.tags.get('process.host')}: another train is using this checkpoint; stop it "
                           "first")
    client.update_run(run_id, status="RUNNING")
    earlier = client.get_run(run_id).data.tags.get("status_note", "")
    for key, value in {**process_tags(), "status_note": f"{note} by process {os.getpid()}" +
                       (f" (before: {earlier})" if earlier else "")}.items():
        client.set_tag(run_id, key, value)


def reopen(client: MlflowClient, run_file: str | Path, stage: str):
    """The run named by models/run.json, for a later stage to add to without changing its status; a run left
    RUNNING by a killed train is marked KILLED first."""
    if not Path(run_file).is_file():
        raise FileNotFoundError(f"{run_file} not found: it is made by the train stage (`dvc repro train`)")
    run_id = json.loads(Path(run_file).read_text())["run_id"]
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise RuntimeError(f"MLflow run {run_id} named by {run_file} is not in {tracking_uri()} "
                           f"({error.message[:200]}); re-run `dvc repro train`") from error
    if run.info.lifecycle_stage == "deleted":
        raise RuntimeError(f"MLflow run {run_id} named by {run_file} is deleted in {tracking_uri()}: restore it "
                           f"(`mlflow runs restore --run-id {run_id}`) or train again (`dvc repro --force train`)")
    mark_if_orphaned(client, run, stage)
    return client.get_run(run_id)


def card_versions(client: MlflowClient, card: dict, card_sha: str) -> tuple[list, list]:
    """(complete versions of the card's registered model made from its run that carry this card's hash, all
    versions made from that run)."""
    info = card["mlflow"]
    versions = client.search_model_versions(f"name='{info['name']}' and run_id='{info['run_id']}'")
    matching = [v for v in versions if v.tags.get("model_card_sha256") == card_sha and "incomplete" not in v.tags]
    return matching, versions


def check_registered(card: dict, card_sha: str, where: Path) -> str:
    """Hold a local model card against the registry it names, when that registry can be reached: raise
    RuntimeError when the registry holds versions of the card's run but none with this card's hash (the card
    or the files it vouches for were changed after registration). Returns what was checked, in words."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or resolve_uri(card["mlflow"]["tracking_uri"], Path.cwd())
    try:
        client = open_store(uri, timeout_s=5)
        matching, versions = card_versions(client, card, card_sha)
    except (StoreError, MlflowException) as error:
        return f"registry not reachable ({str(error)[:160]}): only the local card vouches for {where}"
    if not versions:
        return f"registry {uri} holds no version of run {card['mlflow']['run_id']}: only the local card vouches"
    if not matching:
        raise RuntimeError(f"{where}/model_card.json is not the card registered for {card['mlflow']['name']} (run "
                           f"{card['mlflow']['run_id']}, versions {', '.join(str(v.version) for v in versions)}): "
                           "the export was changed after it was registered, so it is not loaded. Re-export "
                           "(`dvc repro export`) or use the registered model (models:/NAME/VERSION)")
    return f"card registered as {card['mlflow']['name']} version {matching[0].version}"


def log_epoch_metrics(client: MlflowClient, run_id: str, epoch: int, values: dict) -> None:
    """All of one epoch's metrics in one batched call (per-metric calls cost ~7 ms each)."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in values.items()])
