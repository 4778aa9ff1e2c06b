"""What the tests share besides fixtures: tiny real ImageFolders, a git + DVC copy of this pipeline, and
subprocess calls that are always bounded in time and always cleaned up."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.error import URLError

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLOURS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40)]


def make_image_folder(
    root: Path, counts: dict[str, int], size: int = 16, seed: int = 0, contrast: float = 1.0
) -> Path:
    """Real PNGs: each class a colour plus per-image noise, so every file is distinct and learnable. Below 1,
    `contrast` pulls the class colours toward grey, so that a tiny model trained for seconds still errs."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = 120 + contrast * (np.array(COLOURS[index % len(COLOURS)]) - 120)
        for i in range(count):
            noise = rng.integers(-40, 40, size=(size, size, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i:03d}.png")
    return root


def tiny_params(data: str, source: str) -> dict:
    """The repo's params.yaml, shrunk to seconds of work on 16 px images."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(
        data=data, test_data=data, image_size=16, min_per_class=5, val_fraction=0.2, test_fraction=0.25
    )
    params["pretrain"].update(data=source, crop_size=16, epochs=1, batch_size=16)
    params["train"].update(crop_size=16, epochs=2, batch_size=16, patience=2, warmup_epochs=0)
    params["runtime"].update(num_workers=0)
    params["evaluate"].update(batch_size=32)
    return params


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    command: list[str], url: str, cwd: Path, env: dict | None, log: Path, wait: float = 180
) -> subprocess.Popen:
    """Start a server process and return it once `url` answers. Its output goes to `log` (a pipe nobody reads
    would block a chatty server once full); if it exits first or never answers, the error holds the log's
    end."""
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"{command} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return server
        except (URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    server.kill()
    raise AssertionError(f"{command} did not answer {url} within {wait:.0f} s: {log.read_text()[-2000:]}")


def mlflow_server_command(port: int, backend_store_uri: str, artifacts: Path | None = None) -> list[str]:
    """`mlflow server` on 127.0.0.1 over `backend_store_uri`; with `artifacts`, a team's server that stores
    the artifacts itself there (clients upload and download through it), else the store's own locations."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", backend_store_uri, "--workers", "1"]
    if artifacts is not None:
        command += ["--serve-artifacts", "--artifacts-destination", str(artifacts)]
    return command


def attempt(
    command: list[str], cwd: Path, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command to its end, bounded, whatever its exit code. Its output goes to files, not pipes: a
    daemon it leaves behind (a DVC queue worker) inherits them and would hold a pipe open forever, never a
    file. Past `timeout` seconds the command and its process group are killed and the test fails, quoting the
    output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        output = []
        for file in (out, err):
            file.seek(0)
            output.append(file.read().decode("utf-8", "replace"))
    if timed_out:
        raise AssertionError(
            f"{command} ran past {timeout:.0f} s and was killed:\n{output[0][-3000:]}\n{output[1][-3000:]}"
        )
    return subprocess.CompletedProcess(command, process.returncode, *output)


def run(
    command: list[str], cwd: Path, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`attempt` a command that must succeed."""
    result = attempt(command, cwd, env, timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def end_processes_in(folder: Path, grace: float = 10) -> list[int]:
    """End every process whose working folder lies in `folder` (daemons a test started there: DVC queue
    workers detach with setsid, so only where they run finds them): SIGTERM, then SIGKILL. Returns their
    PIDs."""
    folder, found = folder.resolve(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                found.append(int(entry.name))
        except OSError:  # gone already, or not ours to read
            continue
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in found):
        time.sleep(0.2)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def split_size(repo: Path, split: str) -> int:
    """How many prepared images `split` holds (each image's split follows its own hash, so tests count)."""
    with open(repo / "data/prepared/manifest.csv", newline="", encoding="utf-8") as f:
        return sum(row["split"] == split for row in csv.DictReader(f))


def clean_env() -> dict:
    """This environment minus MLflow/DVC settings, with this venv's python and dvc first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def build_pipeline_repo(repo: Path) -> tuple[Path, dict]:
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    for code in ("stages", "imgcls"):
        shutil.copytree(ROOT / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    make_image_folder(repo / "data" / "target", {"red": 12, "green": 12, "blue": 12}, seed=1, contrast=0.15)
    make_image_folder(repo / "data" / "source", {"a": 8, "b": 8}, seed=2)
    (repo / "params.yaml").write_text(
        yaml.safe_dump(tiny_params("data/target", "data/source"), sort_keys=False)
    )
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    env = clean_env()
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "test"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["cp", str(ROOT / ".dvc" / "plots_offline.html"), ".dvc/"],
        ["dvc", "config", "plots.html_template", "plots_offline.html"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny pipeline"],
    ):
        run(command, repo, env)
    return repo, env


def registered(repo) -> str:
    """The registry URI of the version models/export was registered as (other tests add versions)."""
    found = json.loads((repo / "models/export/registry.json").read_text())
    return f"models:/{found['name']}/{found['version']}"


def predict(repo, env, *args) -> dict[str, dict]:
    run([sys.executable, "-m", "imgcls", "predict", *args], repo, env)
    with open(repo / "predictions.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def loaded_images(locator) -> list[int]:
    """naturalWidth of each <img> under `locator` (0: it did not load)."""
    return locator.evaluate_all("images => images.map(i => i.complete ? i.naturalWidth : 0)")
