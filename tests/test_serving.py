"""Deployable exports: ONNX and torch.export parity, the predict command, and a served MLflow model."""

from __future__ import annotations

import base64
import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.error import URLError

import pytest

from tests.conftest import run

pytestmark = pytest.mark.pipeline


def predict(repo, env, *args) -> dict[str, dict]:
    run([sys.executable, "-m", "stages.predict", *args], repo, env)
    with open(repo / "predictions.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_export_has_both_runtimes_with_parity(trained_repo):
    repo, _ = trained_repo
    card = json.loads((repo / "models/export/model_card.json").read_text())
    assert set(card["parity"]) == {"onnx", "torch"}
    for figures in card["parity"].values():
        assert figures["images"] == 9 and figures["top1_agreement"] == 1.0
        assert figures["max_abs_diff"] <= figures["atol"] == 1e-4
    assert set(card["model"]["files"]) == {"model.pt2", "model.onnx", "models/model.pt"}


def test_predict_both_runtimes_agree_and_report_unreadable_files(trained_repo, tmp_path):
    repo, env = trained_repo
    folder = tmp_path / "incoming"
    folder.mkdir()
    for image in sorted((repo / "data/prepared/test").rglob("*.png")):
        (folder / f"{image.parent.name}-{image.name}").write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("hello")
    onnx = predict(repo, env, "models/export", str(folder), "--runtime", "onnx", "--batch-size", "4")
    program = predict(repo, env, "models/export", str(folder), "--runtime", "torch", "--batch-size", "4")
    assert len(onnx) == len(program) == 11
    assert onnx[str(folder / "broken.png")]["error"].startswith("not_image")
    assert onnx[str(folder / "notes.txt")]["error"].startswith("not_image")
    good = [p for p, row in onnx.items() if not row["error"]]
    assert len(good) == 9
    for path in good:
        assert onnx[path]["label"] == program[path]["label"]
        assert abs(float(onnx[path]["probability"]) - float(program[path]["probability"])) < 1e-4
        assert len(onnx[path]["top_k"].split(";")) == 3
    correct = sum(onnx[p]["label"] == p.rsplit("/", 1)[1].split("-")[0] for p in good)
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert correct == round(evaluation["test_accuracy"] * 9)  # same images, same answers as evaluate

    via_registry = predict(repo, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"},
                           "models:/image-classifier/1", good[0], "--runtime", "torch")
    assert via_registry[good[0]]["label"] == program[good[0]]["label"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_model_answers_like_predict(trained_repo):
    repo, env = trained_repo
    image = sorted((repo / "data/prepared/test").rglob("*.png"))[0]
    expected = predict(repo, env, "models/export", str(image), "--runtime", "torch")[str(image)]
    port = free_port()
    serve_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", "models:/image-classifier/1", "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], cwd=repo, env=serve_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, seconds=180)
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(image.read_bytes()).decode()]]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            [answer] = json.loads(response.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answer["label"] == expected["label"]
    assert abs(answer["probability"] - float(expected["probability"])) < 1e-5


def wait_until_up(url: str, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {seconds} s")
