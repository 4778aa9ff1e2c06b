"""What a stage process loads before it works: a stage module imports no MLflow, scikit-learn, ONNX or
matplotlib (they are imported where they are used), and torchrun's launcher never imports torch."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.helpers import ROOT, attempt

HEAVY = ("mlflow", "sklearn", "onnx", "onnxruntime", "matplotlib", "scipy")


def loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running `code` (from the repository root)."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = attempt([sys.executable, "-c", script], cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("stage", ["prepare", "pretrain", "train", "evaluate", "export"])
def test_a_stage_module_imports_nothing_heavy_it_does_not_need_yet(stage):
    loaded = loaded_after(f"import stages.{stage}")
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
    if stage in ("prepare", "train"):
        assert "torch" not in loaded  # prepare never needs it; train's launcher must not pay for it


def test_torchruns_launcher_checks_the_store_and_builds_the_command_without_torch(tmp_path):
    code = f"""
from imgcls.config.params import load_params
from imgcls.engine import launch
from imgcls.provenance import store
from stages import train
import os
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///{tmp_path / "mlflow.db"}"
import yaml
raw = yaml.safe_load(open("params.yaml"))
raw["train"]["distributed"]["nproc_per_node"] = 2
open("{tmp_path / "params.yaml"}", "w").write(yaml.safe_dump(raw))
params = load_params("{tmp_path / "params.yaml"}")
assert train.launches(params)
store.connect(params.tracking.timeout)
command = launch.torchrun_command("stages.train", params.train.distributed)
assert command[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in command, command
"""
    assert "torch" not in loaded_after(code)


@pytest.mark.parametrize("chosen", [None, "ACTIVE"])
def test_a_stage_waits_passively_unless_the_user_chose_a_policy(chosen):
    """torch's OpenMP reads OMP_WAIT_POLICY once, when torch loads: a stage sets PASSIVE before that (spinning
    threads slowed a `dvc repro` beside another job several times over), and keeps a policy the user set."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env |= {"OMP_WAIT_POLICY": chosen} if chosen else {}
    code = "import os, sys\nimport stages.train\nprint('torch' in sys.modules, os.getenv('OMP_WAIT_POLICY'))"
    result = attempt([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", chosen or "PASSIVE"]  # set, and torch not loaded yet
