"""Serve a registered model over HTTP, hardened against what clients send.

Usage: python -m stages.serve models:/image-classifier/3 [--host 127.0.0.1] [--port 5001] [--max-body-mb 16]

It is MLflow's own scoring app (the same /invocations, /ping and /health, and the same JSON, CSV and Parquet
request formats as `mlflow models serve`) behind two guards that `mlflow models serve` does not have: a
request-body limit (413, checked before the body is read into memory) and error answers that carry one line
and never the server's stack trace or the request echoed back. The model itself (stages.serving) accepts only
image bytes, bounds each image and verifies its files against the model card before loading.
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("serve")


class BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: refuse request bodies over `max_bytes`; strip stack traces and echoed input from
    error answers."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self.refuse(send, 413, f"request body over {self.max_bytes:,} bytes; send fewer or "
                                                "smaller images per request")
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        pending: dict = {}

        async def clean_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    pending["start"], pending["body"] = message, b""
                    return
            elif "start" in pending and message["type"] == "http.response.body":
                pending["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                return await self.refuse(send, pending["start"]["status"], one_line(pending["body"]))
            await send(message)

        try:
            await self.app(scope, limited_receive, clean_send)
        except BodyTooLarge:
            if not started:
                await self.refuse(send, 413, f"request body over {self.max_bytes:,} bytes; send fewer or smaller "
                                             "images per request")

    @staticmethod
    async def refuse(send, status: int, message: str) -> None:
        body = json.dumps({"error_code": "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR",
                           "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def one_line(body: bytes) -> str:
    """The reason from an MLflow error answer, without its stack trace or the echoed request."""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    message = message.split("Error: ", 1)[-1] if message.startswith("Failed to predict data") else message
    return " ".join(message.split())[:500] or "the request could not be served"


def build_app(model_uri: str, max_bytes: int):
    """MLflow's scoring app for `model_uri`, wrapped in the guard."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    from stages import tracking
    mlflow.set_tracking_uri(tracking.tracking_uri())
    return Guard(scoring_server.init(mlflow.pyfunc.load_model(model_uri)), max_bytes)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description="Serve a registered model over HTTP, hardened.")
    parser.add_argument("model", help="MLflow model URI, e.g. models:/image-classifier/3")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body accepted")
    args = parser.parse_args(argv)
    import uvicorn
    app = build_app(args.model, int(args.max_body_mb * 2**20))
    log.info("serving %s on http://%s:%d/invocations", args.model, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
