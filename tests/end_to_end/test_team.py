"""What a team shares: a DVC remote a fresh clone pulls from with nothing left to run, one MLflow server every
stage logs to, and queued experiments run two at a time, none lost. All real: a local-directory remote, an
`mlflow server` process on 127.0.0.1, DVC's own queue."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import (
    ROOT,
    attempt,
    digest,
    end_processes_in,
    free_port,
    mlflow_server_command,
    run,
    start_server,
)

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def lock_outputs(repo: Path) -> dict[str, str]:
    """{path: md5} of every file output in dvc.lock (folders: their .dir hash)."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


def commit_results(repo: Path, env: dict) -> None:
    """What a user does after `dvc repro`: commit dvc.lock and the small outputs git keeps."""
    run(["git", "add", "-A"], repo, env)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo, timeout=60).returncode:
        run(["git", "commit", "-qm", "results"], repo, env)


def test_a_fresh_clone_pulls_everything_and_has_nothing_to_rerun(trained_repo, tmp_path):
    repo, env = trained_repo
    remote = tmp_path / "remote"
    commit_results(repo, env)
    # .dvc/config.local: not committed
    run(["dvc", "remote", "add", "--local", "-d", "team", str(remote)], repo, env)
    try:
        pushed = run(["dvc", "push"], repo, env)
        assert "pushed" in pushed.stdout, pushed.stdout
    finally:
        run(["dvc", "remote", "remove", "--local", "team"], repo, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "models/model.pt").exists()  # git holds none of the artifacts
    run(["dvc", "remote", "add", "--local", "-d", "team", str(remote)], clone, env)
    run(["dvc", "pull"], clone, env)
    outputs = lock_outputs(repo)
    assert {
        "models/model.pt",
        "models/pretrained.pt",
        "models/checkpoint.pt",
        "data/prepared",
        "models/export",
    } <= set(outputs)
    for path in (
        "models/model.pt",
        "models/pretrained.pt",
        "models/checkpoint.pt",
        "models/export/model.onnx",
        "data/prepared/manifest.csv",
    ):
        assert digest(clone / path) == digest(repo / path), path
    status = run(["dvc", "status"], clone, env)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    again = run(["dvc", "repro"], clone, env)
    assert "Running stage" not in again.stdout, again.stdout


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 over a sqlite store, serving the artifacts itself; yields its URI."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(
        mlflow_server_command(port, f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts"),
        f"{uri}/health",
        tmp_path,
        None,
        tmp_path / "server.log",
        wait=120,
    )
    try:
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_stage_logs_to_one_mlflow_server(trained_repo, tmp_path, mlflow_server):
    """A copy of the trained repo re-runs train and export against the server: the run, its metrics, the
    exported model's files (stored by the server) and the registered version all land there."""
    repo, env = trained_repo
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)
    (copy / "mlflow.db").unlink()  # nothing may fall back to the local store
    served = env | {"MLFLOW_TRACKING_URI": mlflow_server}
    run(["dvc", "repro", "--force", "--single-item", "train", "export"], copy, served)  # evaluate's as before
    assert not (copy / "mlflow.db").exists()
    client = MlflowClient(mlflow_server)
    [found] = client.search_runs([client.get_experiment_by_name("image-classifier").experiment_id])
    assert found.info.status == "FINISHED" and json.loads((copy / "models/run.json").read_text()) == {
        "run_id": found.info.run_id,
        "experiment_id": found.info.experiment_id,
        "tracking_uri": mlflow_server,
    }
    assert {"train_loss", "val_accuracy", "export_onnx_max_abs_diff"} <= set(found.data.metrics)
    stored = {
        p.name for p in (tmp_path / "server-artifacts").rglob("*") if p.is_file()
    }  # by the server, not here
    assert {"model_card.json", "model.onnx"} <= stored, stored
    downloaded = Path(client.download_artifacts(found.info.run_id, "", str(tmp_path / "downloaded")))
    cards = list(downloaded.rglob("model_card.json"))  # export/ and the logged model's own copy
    assert cards and all(json.loads(c.read_text())["mlflow"]["run_id"] == found.info.run_id for c in cards)
    [version] = client.search_model_versions("name='image-classifier'")
    assert version.run_id == found.info.run_id and version.status == "READY"


def test_queued_experiments_run_two_at_a_time_and_all_land(trained_repo):
    repo, env = trained_repo
    commit_results(repo, env)
    grid = {"lr-a": "0.03", "lr-b": "0.004"}  # none the workspace has run; two workers, one each
    for name, lr in grid.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}", "train"], repo, env)
    try:
        # its workers are daemons: see finally
        run(["dvc", "queue", "start", "-j", "2"], repo, env, timeout=120)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            status = run(["dvc", "queue", "status"], repo, env, timeout=120).stdout
            if not any(state in status for state in ("Queued", "Running")):
                break
            time.sleep(3)
        else:
            raise AssertionError(f"the queue did not finish in 900 s:\n{status}")
    finally:
        attempt(["dvc", "queue", "stop"], repo, env, timeout=120)
        end_processes_in(repo)  # the daemon and idle workers `dvc queue stop` leaves (setsid: found by cwd)
    assert status.count("Success") == len(grid), status
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    experiments = {exp["name"]: exp for commit in shown for exp in (commit.get("experiments") or [])}
    assert set(grid) <= set(experiments), list(experiments)
    for name, lr in grid.items():
        [revision] = experiments[name]["revs"]
        params = revision["data"]["params"]["params.yaml"]["data"]
        assert str(params["train"]["lr"]) == lr
        assert "best_val_accuracy" in revision["data"]["metrics"]["metrics/train.json"]["data"]
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("dvc exp show "))
    table = run(
        ["bash", "-c", command.split("  #")[0] + " --no-pager"], repo, env | {"COLUMNS": "400"}
    ).stdout
    assert all(name in table for name in grid) and "test_accuracy" in table and "train.lr" in table, table
    assert max(len(line.rstrip()) for line in table.splitlines()) <= 200, table  # the README's line fits
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("image-classifier").experiment_id
    for name, lr in grid.items():
        [found] = client.search_runs([experiment], filter_string=f"tags.`dvc.experiment` = '{name}'")
        assert found.info.status == "FINISHED" and found.data.params["train.lr"] == lr
        assert "val_accuracy" in found.data.metrics
