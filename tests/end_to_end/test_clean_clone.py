"""CI's promise: a clean clone re-derives the committed reference results of the shipped sample.

`python -m imgcls reproduce` decides how strictly: exact when this machine runs the same pinned CPU runtime
as the reference (runtime.reproducible: any x86-64 CPU, same threads and library versions), else integrity
counts exact and headline metrics inside the reference's 95% interval. Its report names the mode, both
fingerprints and every metric that moved, so the CI log says whether a failure is rounding or a regression.
"""

from __future__ import annotations

import sys

import pytest

from tests.helpers import ROOT, attempt, clean_env, run

pytestmark = pytest.mark.reproduce


def test_clean_clone_reproduces_committed_reference(tmp_path):
    clone = tmp_path / "clone"
    env = clean_env()
    run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path, env)
    run(["dvc", "repro", "evaluate"], clone, env)  # every reference metric; export adds none (and ~90 s)
    check = attempt([sys.executable, "-m", "imgcls", "reproduce"], cwd=clone, env=env)
    print(check.stdout)
    assert check.returncode == 0, (
        f"the committed reference did not reproduce:\n{check.stdout}\n{check.stderr}"
    )
