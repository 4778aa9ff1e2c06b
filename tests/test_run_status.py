"""MLflow runs tell the truth: a SIGTERM ends a run KILLED, a SIGKILL's orphan is found and marked by the next
stage, a shared store survives two pipelines creating it at once, and a silent server fails fast."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imgcls.config.params import load_params
from imgcls.provenance import store
from tests.conftest import ROOT, clean_env, run, set_param


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
