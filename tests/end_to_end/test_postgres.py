"""A team's MLflow on PostgreSQL: a real PostgreSQL (Debian's, installed by tests/install_services.sh) that
the test starts on 127.0.0.1 and stops, `mlflow server` over it serving the artifacts itself, and the pipeline
run against that server: one run, the registered version, lineage 8/8, and `python -m stages.audit` of the
registered version end to end (the suite's one re-derivation; the audit's parts: provenance/test_audit.py)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import attempt, free_port, mlflow_server_command, run, start_server

pytestmark = pytest.mark.pipeline


def postgres_tool(name: str) -> str:
    """initdb or pg_ctl: on PATH, or where Debian puts them (not on PATH)."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None
    )
    if not found:
        pytest.fail(
            f"PostgreSQL's {name} is not installed: run tests/install_services.sh (Debian's postgresql)"
        )
    return found


@pytest.fixture
def postgres():
    """A PostgreSQL server of the test's own on 127.0.0.1 (trust auth, user mlflow), stopped afterwards;
    yields its URI. Run as the `postgres` user when the tests run as root, which PostgreSQL refuses."""
    folder = Path(tempfile.mkdtemp(prefix="imgcls-pg-"))  # not under pytest's root-only tmp
    as_user = []
    if os.geteuid() == 0:
        os.chown(folder, pwd.getpwnam("postgres").pw_uid, -1)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    made = attempt(
        [*as_user, postgres_tool("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"],
        folder,
        timeout=180,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    options = f"-h 127.0.0.1 -p {port} -k {folder}"
    pg_ctl = [*as_user, postgres_tool("pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    started = attempt(
        [*pg_ctl, "-l", str(folder / "server.log"), "-o", options, "start"], folder, timeout=120
    )
    assert started.returncode == 0, started.stdout + started.stderr + (folder / "server.log").read_text()
    try:
        yield f"postgresql://mlflow@127.0.0.1:{port}/postgres"
    finally:
        attempt([*pg_ctl, "-m", "fast", "stop"], folder, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def audit(repo, env, *args) -> tuple[int, str]:
    done = attempt([sys.executable, "-m", "stages.audit", *args], cwd=repo, env=env, timeout=900)
    return done.returncode, done.stdout + done.stderr


def test_a_team_server_on_postgresql_runs_the_pipeline_and_the_audit_re_derives_its_model_bit_for_bit(
    pipeline_repo, postgres, tmp_path
):
    """One tiny pipeline serves both (a re-derivation is a whole run): the team's server on PostgreSQL holds
    its run and version, lineage 8/8 against it, and the audit of the registered version, whose images are
    tracked by DVC, re-derives it bit for bit; an edited card stops the audit before any work, and an input
    missing from every cache is named."""
    import psycopg

    repo, env = pipeline_repo
    run(["git", "rm", "-r", "-q", "--cached", "data/target"], repo, env)  # the user's images: tracked by DVC
    run(["dvc", "add", "-q", "data/target"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "data under DVC"], repo, env)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(
        mlflow_server_command(port, postgres, tmp_path / "artifacts"),
        f"{uri}/health",
        tmp_path,
        env,
        tmp_path / "server.log",
        wait=180,
    )
    try:
        served = env | {"MLFLOW_TRACKING_URI": uri}
        run(["dvc", "repro"], repo, served)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", "trained"], repo, env)
        assert not (repo / "mlflow.db").exists()  # nothing fell back to a local store
        client = MlflowClient(uri)
        [found] = client.search_runs([client.get_experiment_by_name("image-classifier").experiment_id])
        [version] = client.search_model_versions("name='image-classifier'")
        assert found.info.status == "FINISHED" and version.run_id == found.info.run_id
        card = json.loads((repo / "models/export/model_card.json").read_text())
        assert card["mlflow"]["tracking_uri"] == uri and card["mlflow"]["run_id"] == found.info.run_id
        with psycopg.connect(postgres) as connection, connection.cursor() as cursor:  # in PostgreSQL itself
            cursor.execute("SELECT run_uuid, status FROM runs")
            assert cursor.fetchall() == [(found.info.run_id, "FINISHED")]
            cursor.execute("SELECT name, version FROM model_versions")
            assert cursor.fetchall() == [("image-classifier", int(version.version))]
        assert {"model_card.json", "model.onnx"} <= {p.name for p in (tmp_path / "artifacts").rglob("*")}

        lineage = attempt([sys.executable, "-m", "imgcls", "lineage", "models/export"], repo, served)
        assert lineage.returncode == 0 and "8/8 links verified" in lineage.stdout, (
            lineage.stdout + lineage.stderr
        )
        registered = f"models:/image-classifier/{version.version}"
        code, out = audit(repo, served, registered)  # the card and files: the version's, from the server
        assert code == 0 and "VERDICT re-derived bit for bit: 6 DVC hashes, 6 model files" in out, out
        assert f"run {found.info.run_id} (FINISHED) in {uri}" in out  # checked against the team's server
        assert "prepare.data = data/target: checked out of the DVC cache" in out
        assert "mlflow.run_id" in out and "may differ" in out
        assert len(client.search_runs([found.info.experiment_id])) == 1  # the re-run logged elsewhere
        worktrees = run(["git", "worktree", "list"], repo, env).stdout.splitlines()
        assert len(worktrees) == 1  # the audit's is gone

        card_path = repo / "models/export/model_card.json"
        original = card_path.read_text()
        edited = json.loads(original)
        edited["metrics"]["test_accuracy"] = 0.99
        card_path.write_text(json.dumps(edited))
        code, out = audit(repo, served, "models/export")
        assert code == 2 and "VERDICT cannot audit" in out and "re-deriving" not in out, out
        assert "BROKEN model card" in out or "BROKEN git commit -> MLflow run" in out
        card_path.write_text(original)

        shutil.rmtree(repo / ".dvc" / "cache")  # the images' only copy outside the workspace
        code, out = audit(repo, served, registered)
        assert code == 2, out
        assert "input prepare.data = data/target (data/target.dvc) is missing from the DVC cache" in out
        assert "and from every remote (none set)" in out
    finally:
        server.terminate()
        server.wait(timeout=30)
