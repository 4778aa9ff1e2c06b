"""MLflow runs tell the truth: a SIGTERM ends a run KILLED, a SIGKILL's orphan is found and marked by the next
stage, a shared store survives two pipelines creating it at once, and a silent server fails fast."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imgcls.config import layout
from imgcls.config.params import load_params
from imgcls.provenance import runs, store
from tests.helpers import ROOT, clean_env, run, set_param


def wait_for_running_run(client: MlflowClient, process: subprocess.Popen, log: Path, seconds: float = 300):
    """The run a train process created, once it has logged its first epoch; fails at once, with the process's
    output, if it ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"train exited {process.returncode} before its first epoch:\n{log.read_text()}"
            )
        experiment = client.get_experiment_by_name("image-classifier")
        if experiment:
            for found in client.search_runs([experiment.experiment_id]):
                if (
                    found.data.tags.get("process.pid") == str(process.pid)
                    and "train_loss" in found.data.metrics
                ):
                    return found
        time.sleep(0.5)
    raise AssertionError(
        f"no run with a logged epoch from process {process.pid} within {seconds} s:\n{log.read_text()}"
    )


@pytest.mark.pipeline
def test_sigterm_marks_killed_and_a_sigkilled_run_is_marked_by_the_next_stage(pipeline_repo, tmp_path):
    repo, env = pipeline_repo
    set_param(repo, "train", "epochs", 500)
    set_param(repo, "train", "patience", 500)
    run(["dvc", "repro", "prepare", "pretrain"], repo, env)  # everything train reads
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    client.search_experiments()  # the store exists before any train process starts

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        (repo / "models/checkpoint.pt").unlink(missing_ok=True)  # a new run each time, not a resumed one
        log = tmp_path / f"{name}.log"
        with open(log, "w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "stages.train"],
                cwd=repo,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            ), log

    terminated, log = start("terminated")
    first = wait_for_running_run(client, terminated, log)
    terminated.send_signal(signal.SIGTERM)
    assert terminated.wait(timeout=60) == 143
    assert "stopped (stopped by signal 15)" in log.read_text()
    assert client.get_run(first.info.run_id).info.status == "KILLED"

    killed, log = start("killed")
    second = wait_for_running_run(client, killed, log)
    killed.kill()
    killed.wait(timeout=60)
    assert client.get_run(second.info.run_id).info.status == "RUNNING"  # nobody could mark it

    again, log = start("again")
    wait_for_running_run(client, again, log)
    again.send_signal(signal.SIGTERM)
    again.wait(timeout=60)
    orphan = client.get_run(second.info.run_id)
    assert orphan.info.status == "KILLED"
    assert (
        orphan.data.tags["status_note"] == f"marked KILLED by train: its process {killed.pid} on "
        f"{socket.gethostname()} is gone"
    )
    assert len({first.info.run_name, second.info.run_name}) == 2  # unique names


FIRST_USE = """
import sys, time
from pathlib import Path
from imgcls.provenance import store
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()  # imports done
while not go.exists():
    time.sleep(0.001)
print(store.experiment_id(store.connect(), "shared"))
"""


def test_two_pipelines_creating_one_store_at_once(tmp_path):
    env = clean_env() | {"DVC_ROOT": str(tmp_path)}  # both use the default store: <DVC_ROOT>/mlflow.db
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_USE, str(flag), str(go)],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 240
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both make their first connect at the same moment, after their imports
    results = [(p.wait(timeout=240), p.stdout.read().strip(), p.stderr.read()) for p in processes]
    assert [code for code, _, _ in results] == [0, 0], results
    assert results[0][1] == results[1][1] and results[0][1].isdigit()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "shared"]


def test_silent_tracking_server_fails_within_the_default_timeout(monkeypatch):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        timeout = load_params(ROOT / "params.yaml").tracking.timeout
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=f"MLflow tracking server {uri} does not answer"):
            store.connect(timeout)
        assert timeout == 15 and time.monotonic() - start < timeout + 5


@pytest.fixture
def local_store(tmp_path, monkeypatch) -> MlflowClient:
    """A real sqlite MLflow store of its own, in an empty folder that is the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return store.connect(15)


def run_file_for(
    client: MlflowClient, tags: dict | None = None, status: str | None = None
) -> tuple[Path, str]:
    """A run in the store, with models/run.json naming it as train writes it."""
    experiment = store.experiment_id(client, "reopen-test")
    run_id = client.create_run(experiment, tags=tags or {}).info.run_id
    if status:
        client.set_terminated(run_id, status)
    runs.write_run_file(client, run_id)
    return Path(layout.RUN), run_id


def test_reopen_returns_the_named_run_leaving_its_status(local_store):
    run_file, run_id = run_file_for(local_store, status="FINISHED")
    found = runs.reopen(local_store, run_file, "evaluate")
    assert found.info.run_id == run_id and found.info.status == "FINISHED"


def test_reopen_marks_a_run_whose_process_is_gone_killed(local_store):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)  # a PID that no process holds now
    tags = {"process.host": socket.gethostname(), "process.pid": str(gone.pid)}
    run_file, run_id = run_file_for(local_store, tags=tags)
    assert local_store.get_run(run_id).info.status == "RUNNING"
    found = runs.reopen(local_store, run_file, "evaluate")
    assert found.info.status == "KILLED"
    assert found.data.tags["status_note"].startswith(f"marked KILLED by evaluate: its process {gone.pid}")


def test_reopen_leaves_a_live_process_run_running(local_store):
    tags = {"process.host": socket.gethostname(), "process.pid": str(os.getppid())}  # alive: our parent
    run_file, _ = run_file_for(local_store, tags=tags)
    assert runs.reopen(local_store, run_file, "evaluate").info.status == "RUNNING"


def test_reopen_says_what_to_run_when_the_run_is_missing_or_deleted(local_store, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"models/run.json not found: .*`dvc repro train`"):
        runs.reopen(local_store, tmp_path / layout.RUN, "evaluate")
    run_file, run_id = run_file_for(local_store, status="FINISHED")
    local_store.delete_run(run_id)
    with pytest.raises(
        RuntimeError, match=rf"{run_id} .* is deleted .*mlflow runs restore --run-id {run_id}"
    ):
        runs.reopen(local_store, run_file, "evaluate")
    run_file.write_text(json.dumps({"run_id": "0" * 32}))
    with pytest.raises(
        RuntimeError, match=r"0{32} named by models/run.json is not in .*re-run `dvc repro train`"
    ):
        runs.reopen(local_store, run_file, "evaluate")
