"""The served model's memory, bounded per request whatever the images decode to, and error answers that
never echo what was sent."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.serving.client import chunked_post, frame, memory_mb, post, serve_registered, sparse_png

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def test_server_memory_is_bounded_per_request_and_errors_never_echo_it(trained_repo):
    """Images that decode to tens of megapixels from a few KB: a request over the pixel budget is refused from
    the headers, before anything is decoded; one within it is decoded an image at a time, shrunk as it is
    read, so the server's peak memory stays near one image. Malformed requests get one line that quotes
    nothing of them; bodies over the limit get 413 however they are framed; JSON too deep for a parser gets
    400."""
    repo, env = trained_repo
    bomb = base64.b64encode(sparse_png()).decode()
    server, port = serve_registered(repo, env, "--max-body-mb", "1")
    try:
        image = sorted((repo / "data/prepared/test").rglob("*.jpg"))[0]
        # warm: all loaded
        assert post(port, frame([base64.b64encode(image.read_bytes()).decode()]))[0] == 200
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
