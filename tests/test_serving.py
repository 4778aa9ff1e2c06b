"""Deployable exports and a served model that only ever reads the image a client sends: ONNX and torch.export
parity, the predict command, tampered files refused, and real HTTP requests against the hardened server."""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest
from PIL import Image, ImageDraw

from tests.conftest import attempt, free_port, run, start_server

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def registered(repo) -> str:
    """The registry URI of the version models/export was registered as (other tests add versions)."""
    found = json.loads((repo / "models/export/registry.json").read_text())
    return f"models:/{found['name']}/{found['version']}"


def predict(repo, env, *args) -> dict[str, dict]:
    run([sys.executable, "-m", "imgcls", "predict", *args], repo, env)
    with open(repo / "predictions.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_export_has_both_runtimes_with_parity(trained_repo):
    repo, _ = trained_repo
    card = json.loads((repo / "models/export/model_card.json").read_text())
    assert set(card["parity"]) == {"onnx", "torch"}
    for figures in card["parity"].values():
        assert figures["images"] == 9 and figures["top1_agreement"] == 1.0
        assert figures["max_abs_diff"] <= figures["atol"] == 1e-4
    assert set(card["model"]["files"]) == {
        "model.pt2",
        "model.onnx",
        "labels.json",
        "preprocessing.json",
        "calibration.json",
        "models/model.pt",
    }
    assert (
        card["mlflow"]["tracking_uri"] == "sqlite:///mlflow.db"
    )  # relative: a copied repo checks its own store


def test_predict_both_runtimes_agree_and_report_unreadable_files(trained_repo, tmp_path):
    repo, env = trained_repo
    folder = tmp_path / "incoming"
    folder.mkdir()
    for image in sorted((repo / "data/prepared/test").rglob("*.jpg")):
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

    via_registry = predict(
        repo,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"},
        registered(repo),
        good[0],
        "--runtime",
        "torch",
    )
    assert via_registry[good[0]]["label"] == program[good[0]]["label"]


def test_probabilities_are_temperature_scaled_and_logits_are_not(trained_repo, tmp_path):
    """The export's logits are the model's (parity holds on them); predict and serving divide them by the T
    evaluate fitted on val before the softmax."""
    import numpy as np
    import torch

    from imgcls.data.images import decode_image
    from imgcls.data.transforms import eval_transform
    from imgcls.export.formats import load_runtime

    repo, env = trained_repo
    export = repo / "models/export"
    temperature = json.loads((export / "calibration.json").read_text())["temperature"]
    assert temperature != 1.0  # fitted: the tiny model's val NLL is not minimal at T = 1
    files = sorted((repo / "data/prepared/test").rglob("*.jpg"))
    transform = eval_transform(json.loads((export / "preprocessing.json").read_text()))
    batch = torch.stack([transform(decode_image(f.read_bytes())) for f in files]).numpy()
    logits = load_runtime(export, "onnx")(batch)
    scaled = torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy()
    rows = predict(repo, env, "models/export", *map(str, files), "--runtime", "onnx")
    for file, expected in zip(files, scaled):
        assert float(rows[str(file)]["probability"]) == pytest.approx(float(expected.max()), abs=2e-6)
    raw = torch.softmax(torch.from_numpy(logits), 1).numpy().max(1)
    assert not np.allclose(raw, scaled.max(1), atol=1e-3)  # the scaling shows in what users read


def test_swapped_export_file_is_refused_before_loading(trained_repo, tmp_path):
    repo, env = trained_repo
    copy = tmp_path / "export"
    shutil.copytree(repo / "models/export", copy)
    (copy / "model.pt2").write_bytes((copy / "model.pt2").read_bytes() + b"payload")
    image = next((repo / "data/prepared/test").rglob("*.jpg"))
    result = attempt(
        [sys.executable, "-m", "imgcls", "predict", str(copy), str(image), "--runtime", "torch"],
        cwd=repo,
        env=env,
    )
    assert result.returncode == 1 and "model.pt2 does not match its model card" in result.stderr
    assert "Traceback" not in result.stderr
    shutil.copy(repo / "models/export/model.pt2", copy / "model.pt2")
    (copy / "calibration.json").write_text(json.dumps({"temperature": 0.01}))  # would fake high confidence
    result = attempt([sys.executable, "-m", "imgcls", "predict", str(copy), str(image)], cwd=repo, env=env)
    assert result.returncode == 1 and "calibration.json does not match its model card" in result.stderr


def post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read())


def announce_body(port: int, length: int) -> tuple[int, dict]:
    """Send only the headers of a POST declaring a `length`-byte body and read the answer. (Sending a body the
    server refuses races with its closing the connection: the client may see a broken pipe, not the 413.)"""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def frame(values: list) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[v] for v in values]}}).encode()


def serve(command: list[str], repo, env, port: int) -> subprocess.Popen:
    return start_server(
        command,
        f"http://127.0.0.1:{port}/ping",
        repo,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"},
        repo.parent / f"server-{port}.log",
    )


def test_hardened_server_reads_only_the_image_sent(trained_repo):
    repo, env = trained_repo
    image = sorted((repo / "data/prepared/test").rglob("*.jpg"))[0]
    expected = predict(repo, env, "models/export", str(image))[str(image)]
    port = free_port()
    server = serve(
        [
            sys.executable,
            "-m",
            "imgcls",
            "serve",
            registered(repo),
            "--port",
            str(port),
            "--max-body-mb",
            "1",
        ],
        repo,
        env,
        port,
    )
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

        status, answer = announce_body(
            port, 2 * 2**20
        )  # refused on its declared size, before any byte is sent
        assert status == 413 and "over 1,048,576 bytes" in answer["message"]
        status, answer = post(port, frame([base64.b64encode(b"not an image").decode()]))
        assert status == 400 and "not a readable image" in answer["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def sparse_png(side: int = 6000) -> bytes:
    """A 1-bit PNG of a few KB that decodes to side x side pixels (36 MP at 6000)."""
    image = Image.new("1", (side, side), 0)
    ImageDraw.Draw(image).line((0, 0, side - 1, side - 1), fill=1, width=9)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def memory_mb(pid: int) -> dict[str, float]:
    """A process's resident memory now and its peak so far (VmRSS, VmHWM), MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def chunked_post(port: int, chunks: list[bytes]) -> tuple[int, dict]:
    """A POST whose body is sent in chunks, declaring no length."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST",
            "/invocations",
            body=iter(chunks),
            encode_chunked=True,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before all was sent
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_server_memory_is_bounded_per_request_and_errors_never_echo_it(trained_repo):
    """Images that decode to tens of megapixels from a few KB: a request over the pixel budget is refused from
    the headers, before anything is decoded; one within it is decoded an image at a time, shrunk as it is
    read, so the server's peak memory stays near one image. Malformed requests get one line that quotes
    nothing of them; bodies over the limit get 413 however they are framed; JSON too deep for a parser gets
    400."""
    repo, env = trained_repo
    bomb = base64.b64encode(sparse_png()).decode()
    port = free_port()
    server = serve(
        [
            sys.executable,
            "-m",
            "imgcls",
            "serve",
            registered(repo),
            "--port",
            str(port),
            "--max-body-mb",
            "1",
        ],
        repo,
        env,
        port,
    )
    try:
        image = sorted((repo / "data/prepared/test").rglob("*.jpg"))[0]
        assert (
            post(port, frame([base64.b64encode(image.read_bytes()).decode()]))[0] == 200
        )  # warm: all loaded
        before = memory_mb(server.pid)
        start = time.monotonic()
        status, answer = post(port, frame([bomb] * 24))  # 143 KB of JSON, 864 MP decoded
        assert (
            status == 400 and "pixels together, over the 200,000,000 a request may hold" in answer["message"]
        )
        assert time.monotonic() - start < 10
        assert memory_mb(server.pid)["VmHWM"] - before["VmHWM"] < 100, (before, memory_mb(server.pid))
        status, answer = post(port, frame([bomb] * 5))  # 180 MP: within the budget, decoded one by one
        assert status == 200 and len(answer["predictions"]) == 5, answer
        after = memory_mb(server.pid)
        assert after["VmHWM"] - before["VmHWM"] < 300, (
            before,
            after,
        )  # one image's worth, not five (~1.8 GB)
        assert after["VmRSS"] - before["VmRSS"] < 100, (before, after)  # and handed back after the request

        for body, secret in [
            (b'{"dataframe_split": SECRET-TOKEN-123', "SECRET-TOKEN-123"),
            (
                json.dumps(
                    {"dataframe_split": {"columns": ["<script>alert(1)</script>"], "data": [["x"]]}}
                ).encode(),
                "<script>",
            ),
            (b"image\n<script>alert(1)</script>\n", "<script>"),
        ]:
            status, answer = post(port, body, "text/csv" if body.startswith(b"image") else "application/json")
            assert status == 400 and secret not in json.dumps(answer), answer
            assert set(answer) == {"error_code", "message"} and "\n" not in answer["message"]
        status, answer = chunked_post(
            port,
            [b'{"dataframe_split": {"columns": ["image"], "data": [["'] + [b"A" * 65536] * 20 + [b'"]]}}'],
        )
        assert status == 413 and "over 1,048,576 bytes" in answer["message"], answer
        status, answer = post(port, b"[" * 100_000 + b"]" * 100_000)
        assert status == 400 and "nested deeper than 32 levels" in answer["message"], answer
        assert post(port, frame([base64.b64encode(image.read_bytes()).decode()]))[0] == 200  # still serving
    finally:
        server.terminate()
        server.wait(timeout=30)
    log = (repo.parent / f"server-{port}.log").read_text()
    assert "Traceback" not in log, log[-3000:]


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
