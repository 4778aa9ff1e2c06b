"""What marks a tree dirty, on a real git repository: code or data, not outputs or params."""

from __future__ import annotations

import subprocess

from imgcls.provenance.git import git_state


def test_dirty_means_code_or_data_not_outputs_or_params(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

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
