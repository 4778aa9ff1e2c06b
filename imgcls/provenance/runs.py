"""One MLflow run per model: how it starts (tagged with what ties it to DVC and git), who may change its
status, how a killed run is recognised and continued, and how later stages add to it."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.config import layout
from imgcls.config.params import Params, flatten, params_hash
from imgcls.engine.state import TrainState
from imgcls.files import write_json
from imgcls.provenance import inputs, store, ui_links
from imgcls.provenance.git import git_state
from imgcls.provenance.store import portable_uri, tracking_uri
from imgcls.termination import uninterrupted

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("tracking")


def run_name(params_sha: str) -> str:
    """Unique and meaningful: the stage, the DVC experiment (or `repro`), the params hash, when."""
    return (
        f"train-{os.environ.get('DVC_EXP_NAME') or 'repro'}-{params_sha[:8]}-{time.strftime('%Y%m%dT%H%M%S')}"
    )


@contextmanager
def run_status(client: MlflowClient, run_id: str):
    """The train stage's run ends FINISHED, KILLED (SIGTERM or Ctrl-C) or FAILED; a SIGKILL leaves it RUNNING
    until `mark_if_orphaned` finds its process gone."""
    try:
        yield
    except KeyboardInterrupt:
        with uninterrupted():
            client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        with uninterrupted():
            client.set_terminated(run_id, "FAILED")
        raise
    with uninterrupted():
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
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise RuntimeError(
            f"the checkpoint's MLflow run {run_id} is not in {tracking_uri()} ({error.message[:200]}); "
            "delete the checkpoint (train.checkpoint) to start a fresh run"
        ) from error
    mark_if_orphaned(client, run, "train")
    if client.get_run(run_id).info.status == "RUNNING":
        raise RuntimeError(
            f"MLflow run {run_id} is RUNNING in process {run.data.tags.get('process.pid')} on "
            f"{run.data.tags.get('process.host')}: another train is using this checkpoint; stop it "
            "first"
        )
    client.update_run(run_id, status="RUNNING")
    earlier = client.get_run(run_id).data.tags.get("status_note", "")
    for key, value in {
        **process_tags(),
        "status_note": f"{note} by process {os.getpid()}" + (f" (before: {earlier})" if earlier else ""),
    }.items():
        client.set_tag(run_id, key, value)


def reopen(client: MlflowClient, run_file: str | Path, stage: str):
    """The run named by models/run.json, for a later stage to add to without changing its status; a run left
    RUNNING by a killed train is marked KILLED first."""
    from mlflow.exceptions import MlflowException

    if not Path(run_file).is_file():
        raise FileNotFoundError(f"{run_file} not found: it is made by the train stage (`dvc repro train`)")
    run_id = json.loads(Path(run_file).read_text())["run_id"]
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise RuntimeError(
            f"MLflow run {run_id} named by {run_file} is not in {tracking_uri()} "
            f"({error.message[:200]}); re-run `dvc repro train`"
        ) from error
    if run.info.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow run {run_id} named by {run_file} is deleted in {tracking_uri()}: restore it "
            f"(`mlflow runs restore --run-id {run_id}`) or train again (`dvc repro --force train`)"
        )
    mark_if_orphaned(client, run, stage)
    return client.get_run(run_id)


def log_epoch_metrics(client: MlflowClient, run_id: str, epoch: int, values: dict) -> None:
    """All of one epoch's metrics in one batched call (per-metric calls cost ~7 ms each)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    with uninterrupted():  # a SIGTERM waits for the write: cut, it leaves sqlite locked
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in values.items()])


def log_row(client: MlflowClient, run_id: str, row: dict) -> None:
    """One row of metrics (an epoch's history row; the feature pass as epoch 0) at step row["epoch"]."""
    log_epoch_metrics(client, run_id, row["epoch"], {k: v for k, v in row.items() if k != "epoch"})


def write_run_file(client: MlflowClient, run_id: str) -> None:
    """models/run.json: the run the model came from, which evaluate and export reopen (`reopen`)."""
    write_json(
        layout.RUN,
        {
            "run_id": run_id,
            "experiment_id": client.get_run(run_id).info.experiment_id,
            "tracking_uri": portable_uri(tracking_uri()),
        },
    )


def resume_run(client, resume: TrainState) -> str:
    """The MLflow run a resumed checkpoint belongs to, RUNNING again under this process, with any epoch the
    kill kept from it logged now (none twice)."""
    run_id = resume.meta["run_id"]
    continue_run(client, run_id, f"resumed at epoch {resume.epoch}, step {resume.step}")
    logged = {metric.step for metric in client.get_metric_history(run_id, "train_loss")}
    for row in resume.history:
        if row["epoch"] not in logged:
            log_row(client, run_id, row)
    return run_id


def open_run(
    client: MlflowClient, params: Params, resume: TrainState | None, weights: dict, environment: dict
) -> str:
    """The MLflow run a training goes into: the killed run it resumes, or a new one; logs where to see it."""
    run_id = (
        resume_run(client, resume) if resume else start_run(client, params, weights, environment).info.run_id
    )
    log.info("MLflow: %s", links(client, run_id))
    return run_id


def start_run(client, params: Params, weights: dict, environment: dict):
    """A new MLflow run for this model, tagged with everything that ties it to DVC and git (and with this
    process, so a run a SIGKILL leaves RUNNING can be recognised later)."""
    from mlflow.entities import Param

    experiment = store.experiment_id(client, params.train.experiment)
    mark_orphaned_runs(client, experiment, "train")
    params_sha = params_hash(params.as_dict())
    lock = inputs.dvc_lock_hashes()
    tags = {
        **git_state(layout.all_outputs()),
        **inputs.environment(),
        **process_tags(),
        **{f"env.{k}": "" if v is None else v for k, v in flatten(environment).items()},
        "params_sha256": params_sha,
        "dvc.prepared_md5": lock.get("prepare", {}).get(layout.PREPARED, ""),
        "dvc.data_md5": lock.get("prepare", {}).get(params.prepare.data, ""),
        "dvc.pretrained_md5": lock.get("pretrain", {}).get(layout.PRETRAINED, ""),
        "weights.source": weights["source"],
        "weights.origin": weights["origin"],
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", ""),
        "seed": params.train.seed,
    }
    run = client.create_run(
        experiment,
        run_name=run_name(params_sha),
        tags={k: json.dumps(v) if isinstance(v, list | bool) else str(v) for k, v in tags.items()},
    )
    flat = flatten(params.as_dict())
    logged = [Param(k, "null" if v is None else str(v)) for k, v in flat.items()]
    for start in range(0, len(logged), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=logged[start : start + 100])
    return run


def links(client: MlflowClient, run_id: str) -> str:
    """Where to see a run in the MLflow UI, and every run of its experiment with their test figures."""
    experiment = client.get_run(run_id).info.experiment_id
    uri = tracking_uri()
    return (
        f"this run {ui_links.run_link(uri, experiment, run_id)}; every run of "
        f"{client.get_experiment(experiment).name}, with their test figures, "
        f"{ui_links.runs_link(uri, experiment)}{ui_links.opened_by(uri)}"
    )
