"""What a stage may touch: only the outputs dvc.yaml declares for it, inside the repository, none of them a
file git tracks; and one stage at a time in a workspace. Real git, real files, real processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import yaml

from imgcls.config import layout
from imgcls.workspace import OutsideWorkspace, StageBusy, check_outputs, one_stage_at_a_time
from tests.helpers import ROOT, attempt, clean_env, run


@pytest.fixture
def repo(tmp_path):
    """A git repository holding this pipeline's dvc.yaml and params.yaml, nothing run."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, root / name)
    for command in (
        ["init", "-q"],
        ["config", "user.email", "t@example.com"],
        ["config", "user.name", "t"],
        ["add", "-A"],
        ["commit", "-qm", "pipeline"],
    ):
        run(["git", *command], root, timeout=60)
    (root / ".dvc").mkdir()
    return root


def test_every_stage_may_write_what_it_declares(repo):
    for stage in layout.STAGES:
        check_outputs(stage, repo)


def test_an_output_reached_through_a_link_outside_the_repository_is_refused(repo, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (repo / "models").symlink_to(victim)  # models/export would land in victim/export
    with pytest.raises(
        OutsideWorkspace,
        match=r"models/export resolves to .*victim/export, outside the "
        r"repository .*: stage export deletes and rewrites it",
    ):
        check_outputs("export", repo)
    assert (victim / "precious.txt").read_text() == "keep me"


def test_a_file_git_tracks_inside_a_cached_output_is_refused(repo):
    (repo / "models" / "export").mkdir(parents=True)
    (repo / "models" / "export" / "notes.md").write_text("my notes")
    subprocess.run(["git", "add", "-f", "models/export/notes.md"], cwd=repo, check=True, timeout=60)
    with pytest.raises(
        OutsideWorkspace,
        match=r"git tracks models/export/notes\.md, inside an output of stage "
        r"export .*\(`git rm -r --cached models/export/notes\.md`",
    ):
        check_outputs("export", repo)
    check_outputs("evaluate", repo)  # committed results (metrics, plots) are tracked by design


def test_dvc_yaml_that_declares_other_outputs_is_refused(repo):
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    pipeline["stages"]["export"]["outs"] = ["../victim"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    with pytest.raises(
        OutsideWorkspace,
        match=r"dvc\.yaml declares \['\.\./victim'\] as the outputs of stage export, "
        r"but the stage writes \['models/export'\]",
    ):
        check_outputs("export", repo)


def test_a_stage_started_while_another_runs_is_refused_naming_it(repo):
    with one_stage_at_a_time("train", repo):
        with pytest.raises(StageBusy, match=r"stage train \(pid \d+\) is running in this workspace"):
            with one_stage_at_a_time("evaluate", repo):
                pass
    with one_stage_at_a_time("evaluate", repo):  # free again once it ended
        pass


def test_a_stage_process_refuses_to_start_beside_a_running_one(repo):
    """The lock is held across processes: `python -m stages.prepare` while another stage runs exits 1 in one
    line, having touched nothing."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from imgcls.workspace import one_stage_at_a_time\n"
            f"with one_stage_at_a_time('train', Path({str(repo)!r})):\n"
            "    print('holding', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.monotonic()
        result = attempt(
            [sys.executable, "-m", "stages.prepare"],
            repo,
            clean_env() | {"PYTHONPATH": str(ROOT)},
            timeout=120,
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "stage train (pid" in result.stderr and "is running in this workspace" in result.stderr
        assert time.monotonic() - start < 60 and not (repo / "data" / "prepared").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
