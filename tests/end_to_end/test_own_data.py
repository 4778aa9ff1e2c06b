"""A stranger's first day, as the README tells it: their own folder of images, offline, on a CPU, from `dvc
add` to a registered model, then plots, predictions, a changed param and another `dvc repro` with no commit
that is not theirs, and `reproduce` before and after their results become the reference. The README's own
snippet is what runs: a recipe that does not run as written fails here."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from tests.helpers import ROOT, clean_env, run, split_size

pytestmark = pytest.mark.pipeline


def readme_block(language: str, containing: str) -> str:
    """The README's code block in `language` that holds `containing`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    [block] = [b for b in blocks if containing in b]
    return block


def merge(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        merge(base[key], value) if isinstance(value, dict) else base.__setitem__(key, value)
    return base


def photos(folder, classes: dict[str, int], seed: int) -> None:
    """JPEG photos of mixed sizes, each class its own colour and texture, named as cameras name them."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            height, width = rng.integers(60, 90), rng.integers(80, 120)
            stripes = np.sin(np.arange(width) * (0.2 + 0.3 * index))[None, :, None] * 60
            pixels = np.clip(
                np.array([60, 120, 180])[np.roll([0, 1, 2], index)]
                + stripes
                + rng.normal(0, 20, (height, width, 3)),
                0,
                255,
            ).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"IMG_{i:04d}.JPG", quality=90)


def test_the_readme_recipe_runs_offline_from_dvc_add_to_a_registered_model(tmp_path):
    repo = tmp_path / "project"
    env = clean_env() | {"TORCH_HOME": str(tmp_path / "no-torch-cache")}  # nothing cached, no network needed
    run(["git", "clone", "-q", str(ROOT), str(repo)], tmp_path, env)
    for key, value in (("user.email", "me@example.com"), ("user.name", "me")):
        run(["git", "config", key, value], repo, env)
    photos(repo / "data" / "my_images", {"bark": 12, "brick": 12, "gravel": 12}, seed=3)

    for line in readme_block("bash", "dvc add data/my_images").strip().splitlines():
        run(line.split("#")[0].split(), repo, env) if "&&" not in line else run(
            ["bash", "-c", line.split("  #")[0]], repo, env
        )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    merge(params, yaml.safe_load(readme_block("yaml", "data: data/my_images")))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    repro = run(["dvc", "repro"], repo, env, timeout=1200)
    assert re.findall(r"Running stage '(\w+)'", repro.stdout) == [
        "prepare",
        "pretrain",
        "train",
        "evaluate",
        "export",
    ]
    logs = repro.stdout + repro.stderr
    assert "workflowType=machine_learning" in logs and "viewStateShareKey=headline" in logs  # the UI links
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    [version] = client.search_model_versions("name='my_images'")
    assert version.tags["classes"] == "bark, brick, gravel"
    assert client.get_experiment_by_name("my_images") is not None
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert evaluation["test_images"] == split_size(repo, "test") > 0 and 0 <= evaluation["test_accuracy"] <= 1

    # the committed reference: the sample's
    before = run([sys.executable, "-m", "imgcls", "reproduce"], repo, env)
    assert (
        "other data: prepare.data data/sample/target" in before.stdout
        and "-> data/my_images" in before.stdout
    )
    assert "VERDICT not compared" in before.stdout and "<-- FAILS" not in before.stdout
    adopt = next(line.strip() for line in before.stdout.splitlines() if line.strip().startswith("git add"))
    assert adopt == readme_block("bash", "reference results for").strip()

    run(["dvc", "plots", "show"], repo, env)
    page = (repo / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in page and "window.vegaEmbed" in page  # drawn offline
    new = tmp_path / "new_photos"  # outside the repository, as the README has it: untracked data there would
    photos(new, {"bark": 2, "gravel": 2}, seed=9)  # (rightly) stop the next run until committed
    run([sys.executable, "-m", "imgcls", "predict", "models/export", str(new)], repo, env)
    assert (repo / "predictions.csv").read_text().count("\n") == 5
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert "dvc_plots" not in status.stdout and "predictions.csv" not in status.stdout, status.stdout

    params["evaluate"]["bootstrap"] = 1000  # a changed param, and no commit in between
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run(["dvc", "repro"], repo, env, timeout=1200)
    # export too, if a metric moved
    assert re.findall(r"Running stage '(\w+)'", again.stdout)[0] == "evaluate"

    run(["bash", "-c", adopt], repo, env)  # these results become the reference, with their fingerprints
    after = run([sys.executable, "-m", "imgcls", "reproduce"], repo, env)
    assert "VERDICT reproduced" in after.stdout and "other data" not in after.stdout, after.stdout
