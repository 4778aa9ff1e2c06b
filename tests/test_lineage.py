"""Reproducibility and lineage on the real pipeline: same inputs give the same bytes, and any swap of
model, data or card breaks a named link."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import digest, run, set_param

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def lineage(repo, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.lineage", "models/export"], cwd=repo, env=env,
                          capture_output=True, text=True)


def test_same_inputs_same_bytes_and_lineage_catches_swaps(trained_repo):
    repo, env = trained_repo
    outputs = ["models/model.pt", "models/pretrained.pt", "metrics/evaluate.json", "metrics/train.json",
               "metrics/prepare.json", "metrics/pretrain.json", "plots/train.csv", "plots/confusion.csv"]
    first = {p: digest(repo / p) for p in outputs}
    # A training stage forced to run again gives the same bytes, so nothing downstream is stale. (That the
    # whole pipeline does, from a clean clone, is test_reproduce's exact mode.)
    forced = run(["dvc", "repro", "--force", "--single-item", "pretrain"], repo, env)
    assert "Running stage 'pretrain'" in forced.stdout
    assert {p: digest(repo / p) for p in outputs} == first, "a forced re-run on CPU must give identical bytes"
    assert "Running stage" not in run(["dvc", "repro"], repo, env).stdout

    good = lineage(repo, env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "8/8 links verified" in good.stdout

    model = repo / "models/export/model.pt2"
    original = model.read_bytes()
    model.write_bytes(original + b"swapped")
    broken = lineage(repo, env)
    assert broken.returncode == 1 and "BROKEN model file -> model card" in broken.stdout
    model.write_bytes(original)

    split_file = sorted((repo / "data/prepared/train/red").iterdir())[0]
    original = split_file.read_bytes()
    split_file.write_bytes((repo / "data/target/green/img000.png").read_bytes())
    broken = lineage(repo, env)
    assert broken.returncode == 1 and "data/prepared: modified" in broken.stdout

    # the same file made unreadable: the train stage names it, even from a DataLoader worker process
    split_file.write_bytes(b"no longer an image")
    set_param(repo, "train", "num_workers", 1)
    stage = subprocess.run([sys.executable, "-m", "stages.train"], cwd=repo, env=env, capture_output=True, text=True)
    assert stage.returncode == 1
    assert f"cannot read {split_file.relative_to(repo)}" in stage.stderr and "Traceback" not in stage.stderr
    set_param(repo, "train", "num_workers", 0)
    split_file.write_bytes(original)

    card_path = repo / "models/export/model_card.json"
    original = card_path.read_text()
    card = json.loads(original)
    card["metrics"]["test_accuracy"] = 1.0
    card_path.write_text(json.dumps(card, indent=2))
    broken = lineage(repo, env)
    assert broken.returncode == 1 and "model_card_sha256 (card edited?)" in broken.stdout
    for damaged, kind in [(b"", "empty"), (original.encode()[:200], "JSONDecodeError"), (b"\x89PNG\x00\xff", "")]:
        card_path.write_bytes(damaged)  # empty, truncated, binary: one line each, never a traceback
        broken = lineage(repo, env)
        assert broken.returncode == 1 and "is not a readable model card" in broken.stdout and kind in broken.stdout
        assert "Traceback" not in broken.stderr
    card_path.write_text(original)
    onnx = repo / "models/export/model.onnx"
    onnx.rename(onnx.with_suffix(".away"))
    broken = lineage(repo, env)
    assert broken.returncode == 1 and "model.onnx is missing" in broken.stdout
    onnx.with_suffix(".away").rename(onnx)
    (repo / "mlflow.db").rename(repo / "mlflow.away")
    broken = lineage(repo, env)
    assert broken.returncode == 1 and "mlflow.db does not exist" in broken.stdout
    assert not (repo / "mlflow.db").exists()  # looking never creates an empty store
    (repo / "mlflow.away").rename(repo / "mlflow.db")
    assert lineage(repo, env).returncode == 0


def test_dirty_tree_is_refused_before_any_work(trained_repo):
    """Every stage checks first, before it reads or deletes anything; a dirty tree allowed is recorded
    (test_pipeline)."""
    repo, env = trained_repo
    params = (repo / "params.yaml").read_text()
    manifest = digest(repo / "data/prepared/manifest.csv")
    set_param(repo, "export", "allow_dirty", False)
    (repo / "scratch.py").write_text("# uncommitted code\n")
    try:
        failed = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=repo, env=env, capture_output=True,
                                text=True)
    finally:
        (repo / "scratch.py").unlink()
        (repo / "params.yaml").write_text(params)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "uncommitted changes in scratch.py" in failed.stderr and "git add -A && git commit" in failed.stderr
    assert "export.allow_dirty: true" in failed.stderr
    assert "excluded) from" not in failed.stderr  # prepare's own log line: it never started reading
    assert digest(repo / "data/prepared/manifest.csv") == manifest
    assert lineage(repo, env).returncode == 0
