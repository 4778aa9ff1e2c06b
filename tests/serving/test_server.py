"""A served model that only ever reads the image a client sends: real HTTP requests against the hardened
server, and `mlflow models serve` refusing paths without a stack trace."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import attempt, free_port, predict, registered
from tests.serving.client import announce_body, frame, post, serve, serve_registered

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def test_hardened_server_reads_only_the_image_sent(trained_repo):
    repo, env = trained_repo
    image = sorted((repo / "data/prepared/test").rglob("*.jpg"))[0]
    expected = predict(repo, env, "models/export", str(image))[str(image)]
    server, port = serve_registered(repo, env, "--max-body-mb", "1")
    try:
        status, answer = post(port, frame([base64.b64encode(image.read_bytes()).decode()]))
        assert status == 200 and answer["predictions"][0]["label"] == expected["label"]
        assert abs(answer["predictions"][0]["probability"] - float(expected["probability"])) < 1e-5

        # a client naming server files: the same one-line refusal whether the file exists or not
        refusals = {}
        for name, body, kind in [
            ("existing file, JSON", frame(["/etc/hostname"]), "application/json"),
            ("missing file, JSON", frame(["/no/such/file"]), "application/json"),
            ("folder, JSON inputs", json.dumps({"inputs": {"image": ["/etc"]}}).encode(), "application/json"),
            (
                "endless device, JSON instances",
                json.dumps({"instances": [{"image": "/dev/zero"}]}).encode(),
                "application/json",
            ),
            ("existing file, CSV", b"image\n/etc/hostname\n", "text/csv"),
        ]:
            start = time.monotonic()
            status, answer = post(port, body, kind)
            refusals[name] = (status, answer)
            assert status == 400, (name, answer)
            assert time.monotonic() - start < 10, name  # /dev/zero is never read
            assert set(answer) == {"error_code", "message"} and "Traceback" not in answer["message"], name
            assert "/etc" not in answer["message"] and "/dev" not in answer["message"], name
        assert refusals["existing file, JSON"] == refusals["missing file, JSON"]  # no oracle for what exists

        # refused on its declared size, before any byte is sent
        status, answer = announce_body(port, 2 * 2**20)
        assert status == 413 and "over 1,048,576 bytes" in answer["message"]
        status, answer = post(port, frame([base64.b64encode(b"not an image").decode()]))
        assert status == 400 and "not a readable image" in answer["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_refuses_an_unknown_model_or_a_bad_limit_in_one_line(trained_repo):
    repo, env = trained_repo
    served = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    missing = attempt(
        [sys.executable, "-m", "imgcls", "serve", "models:/no-such-model/1"], repo, served, timeout=120
    )
    assert missing.returncode == 1 and "cannot serve models:/no-such-model/1" in missing.stderr
    assert "Traceback" not in missing.stderr
    negative = attempt(
        [sys.executable, "-m", "imgcls", "serve", registered(repo), "--max-body-mb", "-1"], repo, served
    )
    assert negative.returncode == 2 and "-1 is not a size in MB between 0 and 1024" in negative.stderr


def test_mlflow_models_serve_refuses_paths_without_stack_traces(trained_repo):
    """The same model under MLflow's own server: no path is opened and no trace is returned."""
    repo, env = trained_repo
    port = free_port()
    server = serve(
        [
            "mlflow",
            "models",
            "serve",
            "-m",
            registered(repo),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        repo,
        env,
        port,
    )
    try:
        for body, kind in [
            (frame(["/etc/hostname"]), "application/json"),
            (b"image\n/dev/zero\n", "text/csv"),
        ]:
            status, answer = post(port, body, kind)
            assert status == 400 and "stack_trace" not in answer, answer
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_registered_model_declares_the_distributions_its_code_imports(trained_repo, tmp_path):
    """requirements.txt pins what the served code imports, as installed here; never this project, which no
    index holds (its code travels in the model)."""
    from importlib.metadata import version

    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    repo, _ = trained_repo
    name, version_number = registered(repo).removeprefix("models:/").split("/")
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")  # this store's registry, not a default
    stored = client.get_model_version_download_uri(name, version_number)
    model = mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=str(tmp_path))
    declared = (Path(model) / "requirements.txt").read_text().split()
    names = ["mlflow", "numpy", "onnxruntime", "pandas", "pillow", "torch", "torchvision"]
    assert declared == [f"{name}=={version(name).split('+')[0]}" for name in names]
    assert (Path(model) / "code" / "imgcls" / "serving" / "served_model.py").is_file()
