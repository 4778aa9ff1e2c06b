"""Where runs go and what marks a tree dirty: real MLflow and git, no pipeline run."""

from __future__ import annotations

import subprocess

import pytest

from imgcls.config.params import load_params
from imgcls.provenance import store
from imgcls.provenance.git import git_state
from stages import train
from stages.entry import build_context
from tests.conftest import ROOT


def test_store_location_follows_dvc_root_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what `dvc exp run --temp` sets: the user's repo
    assert store.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri() == "http://127.0.0.1:5000"


def test_unreachable_store_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # loopback, nothing listens there
    monkeypatch.chdir(
        tmp_path
    )  # no models/pretrained.pt: were the store not checked first, FileNotFoundError
    params = load_params(ROOT / "params.yaml", overrides={"train": {"epochs": 1}})
    with pytest.raises(RuntimeError, match="MLflow tracking server http://127.0.0.1:9 does not answer"):
        train.run(build_context("train", params))
    assert not (tmp_path / "models").exists()


def test_dirty_means_code_or_data_not_outputs_or_params(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    for name in ("params.yaml", "train.py", "dvc.lock"):
        (tmp_path / name).write_text("v1\n")
    git("add", "-A")
    git("commit", "-qm", "init")
    assert git_state(("models/model.pt",), tmp_path)["git_dirty"] is False
    (tmp_path / "params.yaml").write_text("v2\n")
    (tmp_path / "dvc.lock").write_text("v2\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_text("weights")
    (tmp_path / "models" / ".gitignore").write_text("/model.pt\n")
    assert git_state(("models/model.pt",), tmp_path)["git_dirty"] is False
    (tmp_path / "train.py").write_text("v2\n")
    (tmp_path / "new_data.csv").write_text("x\n")
    state = git_state(("models/model.pt",), tmp_path)
    assert state["git_dirty"] is True and sorted(state["git_dirty_paths"]) == ["new_data.csv", "train.py"]
    assert len(state["git_commit"]) == 40
