"""What the served-model tests send: HTTP requests made by hand (declared, chunked, refused), image
bombs, and a look at the server's memory."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

from PIL import Image, ImageDraw

from tests.helpers import free_port, registered, start_server


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


def serve_registered(repo, env, *options: str) -> tuple[subprocess.Popen, int]:
    """`python -m imgcls serve` on the registered version of models/export, on a free port: (server, port)."""
    port = free_port()
    command = [sys.executable, "-m", "imgcls", "serve", registered(repo), "--port", str(port), *options]
    return serve(command, repo, env, port), port


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
