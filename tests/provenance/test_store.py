"""Where runs go and a store that does not answer: real MLflow, no pipeline run."""

from __future__ import annotations

import pytest

from imgcls.config.params import load_params
from imgcls.provenance import store
from stages import train
from stages.entry import build_context
from tests.helpers import ROOT


def test_store_location_follows_dvc_root_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what `dvc exp run --temp` sets: the user's repo
    assert store.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri() == "http://127.0.0.1:5000"


def test_unreachable_store_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # loopback, nothing listens there
    # no models/pretrained.pt: were the store not checked first, FileNotFoundError
    monkeypatch.chdir(tmp_path)
    params = load_params(ROOT / "params.yaml", overrides={"train": {"epochs": 1}})
    with pytest.raises(RuntimeError, match="MLflow tracking server http://127.0.0.1:9 does not answer"):
        train.run(build_context("train", params))
    assert not (tmp_path / "models").exists()
