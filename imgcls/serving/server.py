"""Serve a registered model over HTTP, hardened against what clients send.

Usage: python -m imgcls serve models:/image-classifier/3 [--host 127.0.0.1] [--port 5001] [--max-body-mb 16]

It is MLflow's own scoring app (the same /invocations, /ping and /health, and the same JSON, CSV and Parquet
request formats as `mlflow models serve`) behind a guard that `mlflow models serve` does not have:
- one request at a time: a request's body is read (at most --max-body-mb, whatever the framing, else 413)
  and answered before the next one's is read, so the server's memory is bounded by one request;
- a JSON body is checked for nesting depth before MLflow parses it (400, not a 500 from a RecursionError);
- error answers carry one line of ours and never a stack trace or anything of the request: MLflow's own
  messages quote the request back, so they are replaced by a fixed explanation;
- memory a request used is handed back to the system after it.
The model itself (imgcls.serving.model) accepts only image bytes, bounds each image and each request in
decoded pixels, and verifies its files against the model card before loading.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import logging
import re
import sys
from functools import cache

from imgcls.provenance import store
from imgcls.serving.model import REFUSED  # the model's own refusals: the only messages passed on

log = logging.getLogger("serve")
MAX_DEPTH = 32  # JSON nesting: a scoring request needs 4
HELP = (
    'send JSON {"dataframe_split": {"columns": ["image"], "data": [["<base64 image>"], ...]}} '
    "(or `inputs`, `instances`, CSV or Parquet) with one column `image` of base64-encoded image bytes"
)


class Guard:
    """ASGI middleware: one request at a time, its body bounded and checked before MLflow sees it; error
    answers reduced to one line of ours."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes, self.turn = app, max_bytes, asyncio.Semaphore(1)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        async with self.turn:
            try:
                await self.serve(scope, receive, send)
            finally:
                release_memory()

    async def serve(self, scope, receive, send) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await refuse(send, 413, self.too_large())
        body = bytearray()
        while True:  # the whole body, bounded, whatever the framing (chunked bodies declare no length)
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await refuse(send, 413, self.too_large())
            if not message.get("more_body"):
                break
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip()
        if content_type == b"application/json" and (problem := json_problem(bytes(body))):
            return await refuse(send, 400, f"{problem}; {HELP}")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        pending: dict = {}

        async def clean_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                pending["status"], pending["body"] = message["status"], b""
                return
            if "status" in pending and message["type"] == "http.response.body":
                pending["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    await refuse(send, pending["status"], ours(pending["body"], pending["status"]))
                return
            await send(message)

        await self.app(scope, replay, clean_send)

    def too_large(self) -> str:
        return f"request body over {self.max_bytes:,} bytes; send fewer or smaller images per request"


async def refuse(send, status: int, message: str) -> None:
    body = json.dumps(
        {"error_code": "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR", "message": message}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_problem(body: bytes) -> str | None:
    """Why a JSON body cannot be a scoring request (nested too deep for a parser to recurse into), or None.
    Counted on the raw bytes, outside strings, at C speed but for the brackets themselves."""
    depth = 0
    for bracket in STRING.sub(b"", body).translate(None, NOT_BRACKETS):
        depth += 1 if bracket in (0x5B, 0x7B) else -1
        if depth > MAX_DEPTH:
            return f"the JSON is nested deeper than {MAX_DEPTH} levels"
    return None


def ours(body: bytes, status: int) -> str:
    """The one-line reason to send: imgcls.serving.model's own refusal, or a fixed explanation. MLflow's
    messages quote the request back (`Failed to predict data '<the request>'`), so none of them is passed
    on."""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    if REFUSED in message:
        reason = message[message.index(REFUSED) + len(REFUSED) :]
        return " ".join(reason.split())[:300]
    if status == 415:
        return (
            "unsupported content type or charset; "
            "use application/json, text/csv or application/x-parquet (UTF-8)"
        )
    if status >= 500:
        return "the server could not answer this request (see its log)"
    return f"the request could not be read as a scoring request; {HELP}"


@cache
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_memory() -> None:
    """Collect what the request left and hand freed heap back to the system (glibc keeps it otherwise)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)


def build_app(model_uri: str, max_bytes: int):
    """MLflow's scoring app for `model_uri`, wrapped in the guard."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    mlflow.set_tracking_uri(store.tracking_uri())
    return Guard(scoring_server.init(mlflow.pyfunc.load_model(model_uri)), max_bytes)


def body_limit(value: str) -> float:
    megabytes = float(value)
    if not 0 < megabytes <= 1024:
        raise argparse.ArgumentTypeError(f"{value} is not a size in MB between 0 and 1024")
    return megabytes


def argument_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests/test_docs.py parses every command the docs show with it)."""
    parser = argparse.ArgumentParser(
        prog="python -m imgcls serve", description="Serve a registered model over HTTP, hardened."
    )
    parser.add_argument("model", help="MLflow model URI, e.g. models:/image-classifier/3")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=5001, choices=range(1, 65536), metavar="PORT")
    parser.add_argument("--max-body-mb", type=body_limit, default=16.0, help="largest request body accepted")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = argument_parser().parse_args(argv)
    import uvicorn
    from mlflow.exceptions import MlflowException

    from imgcls.provenance.store import StoreError

    try:
        app = build_app(args.model, int(args.max_body_mb * 2**20))
    except (MlflowException, StoreError, OSError, RuntimeError, ValueError) as error:
        log.error(
            "cannot serve %s: %s", args.model, " ".join(str(getattr(error, "message", error)).split())[:300]
        )
        return 1
    log.info("serving %s on http://%s:%d/invocations", args.model, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", limit_concurrency=64)
    return 0


if __name__ == "__main__":
    sys.exit(main())
