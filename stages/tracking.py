"""The one place that talks to MLflow, git and dvc.lock: where runs go and what ties them together."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger("tracking")

LIBRARIES = ("torch", "torchvision", "numpy", "pillow", "scikit-learn", "mlflow", "dvc")


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
        raise RuntimeError(f"MLflow tracking server {uri} does not answer ({error}; gave up after "
                           f"{time.monotonic() - start:.0f} s, tracking.timeout={timeout_s:g}). Start the server, fix "
                           "MLFLOW_TRACKING_URI, or unset it to use the local sqlite store") from error


def connect(timeout_s: float = 15) -> MlflowClient:
    """Point MLflow at the store and prove it answers, before any expensive work."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        probe_server(uri, timeout_s)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
        except Exception as error:  # any failure here means the store is unusable; say which store and why
            hint = (f"if {sqlite_path(uri)} is damaged, move it away (a new store is created) or restore it"
                    if sqlite_path(uri) else "fix MLFLOW_TRACKING_URI or unset it to use the local sqlite store")
            raise RuntimeError(f"MLflow tracking store {uri} cannot be used ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:300]}); {hint}") from error
    return client


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on runs, not GenAI traces


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
                for key, value in EXPERIMENT_KIND.items():
                    if key not in experiment.tags:
                        client.set_experiment_tag(experiment.experiment_id, key, value)
                return experiment.experiment_id
            try:
                return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
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
    """The run named by `train.run` (models/run.json), for a later stage to add to without changing its
    status; a run left RUNNING by a killed train is marked KILLED first."""
    run_id = json.loads(Path(run_file).read_text())["run_id"]
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise RuntimeError(f"MLflow run {run_id} named by {run_file} is not in {tracking_uri()} "
                           f"({error.message[:200]}); re-run `dvc repro train`") from error
    mark_if_orphaned(client, run, stage)
    return client.get_run(run_id)


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
