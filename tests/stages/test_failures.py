"""Failures a user can meet, each as one line naming the file or key and what to do: a damaged MLflow store,
a full disk, a broken params.yaml. Nothing half-written is left behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from imgcls.config.params import load_params
from imgcls.model.checkpoints import save_checkpoint
from imgcls.provenance import store
from stages import prepare
from stages.entry import build_context
from tests.helpers import ROOT, attempt, clean_env, make_image_folder, run


def test_damaged_store_is_named_with_the_way_out(tmp_path, monkeypatch):
    (tmp_path / "mlflow.db").write_bytes(b"this is not sqlite" * 100)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(
        RuntimeError, match=r"mlflow.db cannot be used \(.*\); if .*mlflow.db is damaged, move it away"
    ):
        store.connect()


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: real ENOSPC, not a mock."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if attempt(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], tmp_path).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    run(["umount", str(mount)], tmp_path)


def test_full_disk_in_prepare_names_the_file_and_leaves_no_staging(tmp_path, full_disk, monkeypatch):
    # noise: ~80 KB a prepared JPEG
    data = make_image_folder(tmp_path / "photos", {"a": 12, "b": 12}, size=256)
    monkeypatch.chdir(full_disk)  # data/prepared on the small disk
    params = load_params(
        ROOT / "params.yaml",
        overrides={
            "prepare": {
                "data": str(data),
                "test_data": str(data),
                "test_fraction": 0.2,
                "image_size": 256,
                "min_per_class": 3,
                "workers": 1,
            }
        },
    )
    with pytest.raises(
        OSError,
        match=r"cannot write data/\.prepared\.partial-\d+/\.staging/.*\.jpg "
        r"\(decoded from .*photos/.*\): No space left on device\. Free space",
    ):
        prepare.run(build_context("prepare", params, computes=False))
    assert list((full_disk / "data").iterdir()) == []  # no staging, no partial output


def test_full_disk_never_leaves_a_truncated_model(full_disk):
    model = torch.nn.Linear(512, 512)  # 1 MiB of weights
    with pytest.raises(OSError, match=r"cannot write .*small-disk/model.pt: No space left on device"):
        save_checkpoint(full_disk / "model.pt", model)
    assert list(full_disk.iterdir()) == []


def test_broken_params_yaml_is_one_line_from_a_stage(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  arch: resnet18\n train: [\n")
    result = attempt([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, env=clean_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "params.yaml is not valid YAML at line 3, column 2" in result.stderr
    assert Path(tmp_path).joinpath("data").exists() is False
