"""The served model's memory under the worst requests its limits allow, and under steady load from several
clients. Prints figures; asserts nothing.

Usage: python benchmarks/serve_memory.py [--crop 224] [--requests 400] [--clients 4] [--photo-mp 12]

It builds a ResNet-18 export (random weights, the files the export stage writes, checked by their card), saves
it as the same MLflow pyfunc model the export stage registers, serves it with `python -m imgcls serve` and
reads the server process's memory from /proc: VmRSS (now) and VmHWM (peak, reset before each request by
writing 5 to /proc/<pid>/clear_refs). Images are made here: camera-size JPEG photos cut from the photos
scikit-learn ships, and PNGs of a few KB that decode to tens of megapixels."""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

import torch
from PIL import Image, ImageDraw

from imgcls.data.transforms import preprocessing_spec
from imgcls.export.formats import (
    CALIBRATION_FILE,
    CARD_FILE,
    EXPORT_FILES,
    ONNX_FILE,
    PROGRAM_FILE,
    export_onnx,
    export_program,
)
from imgcls.files import sha256_file
from imgcls.model.networks import build_model
from imgcls.serving.model import MAX_IMAGES, MAX_PIXELS, MAX_REQUEST_PIXELS


def make_export(folder: Path, crop: int) -> None:
    """The export stage's files for a random-weight ResNet-18 taking `crop` px, with a card naming their
    hashes.
    """
    folder.mkdir(parents=True)
    model = build_model("resnet18", 10).eval()
    example = torch.randn(2, 3, crop, crop)
    export_program(model, example, folder / PROGRAM_FILE)
    export_onnx(model, example, folder / ONNX_FILE, 18)
    (folder / "labels.json").write_text(json.dumps([f"class{i}" for i in range(10)]))
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing_spec(crop)))
    (folder / CALIBRATION_FILE).write_text(json.dumps({"temperature": 1.0}))
    card = {"model": {"files": {name: sha256_file(folder / name) for name in EXPORT_FILES}}}
    (folder / CARD_FILE).write_text(json.dumps(card))


def photo(megapixels: float, seed: int) -> bytes:
    """A camera-like JPEG (q90) of `megapixels`, 4:3, from the photos scikit-learn ships, upscaled."""
    from sklearn.datasets import load_sample_images

    base = load_sample_images().images[seed % 2]
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    image = Image.fromarray(base).resize((width, width * 3 // 4), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sparse_png(pixels: int, mode: str) -> bytes:
    """A PNG of a few KB that decodes to `pixels` pixels in `mode` (a line on a blank canvas)."""
    side = int(pixels**0.5)
    image = Image.new(mode, (side, side), 0)
    ImageDraw.Draw(image).line(
        (0, 0, side - 1, side - 1), fill=1 if mode == "1" else (255,) * len(mode), width=9
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def frame(images: list[bytes]) -> bytes:
    return json.dumps(
        {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(i).decode()] for i in images]}}
    ).encode()


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            answer.read()
            return answer.status
    except HTTPError as error:
        return error.code


def memory(pid: int) -> dict[str, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def start(model: Path, port: int, log: Path, max_body_mb: float) -> subprocess.Popen:
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imgcls",
                "serve",
                str(model),
                "--port",
                str(port),
                "--max-body-mb",
                str(max_body_mb),
            ],
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except (URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the server did not answer within 180 s: {log.read_text()[-2000:]}")


def worst_requests(args) -> list[tuple[str, list[bytes]]]:
    """The requests that push the limits: the most camera photos a body holds, the pixel budget spent on
    full-size PNGs (not JPEG: no DCT shortcut), the most rows, and a request over the budget."""
    body_bytes = args.max_body_mb * 2**20 * 3 / 4 * 0.98  # base64 grows bytes by 4/3
    camera = photo(args.photo_mp, 0)
    photos = int(min(body_bytes // len(camera), MAX_REQUEST_PIXELS // (args.photo_mp * 1e6), MAX_IMAGES))
    per_image = min(MAX_PIXELS, MAX_REQUEST_PIXELS // 5)
    return [
        (
            f"{photos} camera photos of {args.photo_mp:g} MP ({len(camera) / 2**20:.1f} MB each)",
            [camera] * photos,
        ),
        (
            f"5 RGBA PNGs of {per_image / 1e6:.0f} MP (the budget, "
            f"{len(sparse_png(per_image, 'RGBA')) // 1024} KB "
            "each)",
            [sparse_png(per_image, "RGBA")] * 5,
        ),
        (f"{MAX_IMAGES} small PNGs (the most rows)", [sparse_png(64 * 64, "RGB")] * MAX_IMAGES),
        (
            "24 1-bit PNGs of 36 MP (over the budget: refused from their headers)",
            [sparse_png(36_000_000, "1")] * 24,
        ),
    ]


def steady_load(port: int, pid: int, requests: int, clients: int) -> None:
    """`requests` requests of 1-4 photos (500x375 JPEG) from `clients` threads; memory sampled as they go."""
    small = [photo(0.1875, seed) for seed in range(2)]
    bodies = [frame(small[: 1 + i % 2] * (1 + i % 2)) for i in range(4)]
    statuses, samples, lock = [], [], threading.Lock()

    def client(number: int) -> None:
        for i in range(number, requests, clients):
            status = post(port, bodies[i % len(bodies)])
            with lock:
                statuses.append(status)
                if len(statuses) % max(1, requests // 8) == 0:
                    samples.append(memory(pid)["VmRSS"])

    start_s = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = sum(status != 200 for status in statuses)
    print(
        f"steady load: {len(statuses)} requests from {clients} clients in "
        f"{time.perf_counter() - start_s:.1f} s, "
        f"{errors} errors; server RSS (MiB) as they went: {', '.join(f'{s:.0f}' for s in samples)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=224, help="the model's input size")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--photo-mp", type=float, default=12.0, help="camera photo size in megapixels")
    parser.add_argument(
        "--max-body-mb", type=float, default=16.0, help="the server's body limit (its default)"
    )
    args = parser.parse_args()
    from imgcls.serving.packaging import save_served_model

    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        make_export(export, args.crop)
        save_served_model(export, Path(tmp) / "model", photo(0.1875, 1))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = start(Path(tmp) / "model", port, Path(tmp) / "server.log", args.max_body_mb)
        try:
            post(port, frame([photo(0.1875, 0)]))
            idle = memory(server.pid)["VmRSS"]
            print(
                f"ResNet-18 at {args.crop} px, served by python -m imgcls serve (body limit "
                f"{args.max_body_mb:g} MB, "
                f"{MAX_REQUEST_PIXELS / 1e6:.0f} MP a request, {MAX_PIXELS / 1e6:.0f} MP an image); server "
                "RSS "
                f"after one request: {idle:.0f} MiB"
            )
            for name, images in worst_requests(args):
                body = frame(images)
                Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
                before = memory(server.pid)["VmRSS"]
                start_s = time.perf_counter()
                status = post(port, body)
                seconds = time.perf_counter() - start_s
                time.sleep(0.5)  # the server hands memory back after it has answered
                after = memory(server.pid)
                print(
                    f"{name}: body {len(body) / 2**20:.1f} MB, HTTP {status} in {seconds:.2f} s; peak RSS "
                    f"{after['VmHWM']:.0f} MiB (+{after['VmHWM'] - before:.0f} over the {before:.0f} "
                    "before), "
                    f"after {after['VmRSS']:.0f} MiB"
                )
            steady_load(port, server.pid, args.requests, args.clients)
            print(
                f"server peak RSS over the whole run: {memory(server.pid)['VmHWM']:.0f} MiB (since the last "
                "reset)"
            )
        finally:
            server.terminate()
            server.wait(timeout=60)
        log = (Path(tmp) / "server.log").read_text()
        if "Traceback" in log:
            print(f"the server log holds a traceback:\n{log[-3000:]}")


if __name__ == "__main__":
    main()
