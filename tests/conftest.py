"""Shared fixtures: tiny real ImageFolders and a temporary git + DVC copy of this pipeline."""

from __future__ import annotations

import os
import subprocess

# Set before anything loads torch (its OpenMP reads it once), and inherited by the pytest workers and every
# stage process they start. Two workers on two cores each run torch with 2 intra-op threads: OpenMP's
# default busy-waiting made two processes at once 8x slower than one alone; waiting passively, 2x
# (benchmarks/omp_wait.py). No result depends on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, build_pipeline_repo, end_processes_in, make_image_folder, run


@pytest.fixture(scope="session", autouse=True)
def repository_left_as_found():
    """No test may write into this repository (its committed reference results above all)."""

    def status() -> str:
        return "".join(
            subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
            for command in (["status", "--porcelain", "--untracked-files=all"], ["diff"])
        )

    before = status()
    yield
    assert status() == before, f"tests changed files of the repository:\n{status()}"


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", {"red": 12, "green": 12, "blue": 12})


@pytest.fixture
def pipeline_repo(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    """A fresh git + DVC repo holding this pipeline, tiny data and tiny params; yields (repo, env)."""
    yield build_pipeline_repo(tmp_path / "repo")
    end_processes_in(tmp_path)  # whatever the test left running there


# The modules whose tests use trained_repo, in two groups. pytest-xdist runs each group on one worker, in
# order (their xdist_group marks are lost under pytest 9, whose node ids xdist 3.8 can no longer suffix). A
# worker builds its own trained repo (a session fixture), so two groups cost one more tiny `dvc repro` (~2
# min) and let CI's two workers each take about half of the ~20 min of work these tests hold.
TRAINED_REPO_GROUPS = {
    "tests/provenance/test_lineage.py": "trained_repo",
    "tests/end_to_end/test_pipeline.py": "trained_repo",
    "tests/serving/test_server.py": "trained_repo",
    "tests/serving/test_server_memory.py": "trained_repo",
    "tests/export/test_formats.py": "trained_repo",
    "tests/end_to_end/test_team.py": "trained_repo_b",
    "tests/end_to_end/test_ui_first_visit.py": "trained_repo_b",
    "tests/end_to_end/test_ui_compare.py": "trained_repo_b",
    "tests/end_to_end/test_plots_page.py": "trained_repo_b",
    "tests/serving/test_predict.py": "trained_repo_b",
}


# Single tests that take minutes of both cores: handed out first, with the clean-clone reproduction.
LONG_TESTS = ("tests/engine/test_cross_cpu.py",)


def pytest_collection_modifyitems(config, items):
    """The clean-clone reproduction and the cross-CPU test first, then the other pipeline runs, then the rest
    (a stable sort: each keeps its order). xdist hands out the shared-repo groups first (largest first), then
    single tests in this order: a minutes-long test left to the end would leave the other worker idle while it
    runs.
    A module that uses trained_repo but is in no group would build a third trained repo on its own."""
    items.sort(
        key=lambda item: (
            0
            if item.get_closest_marker("reproduce") or item.nodeid.startswith(LONG_TESTS)
            else 1
            if item.get_closest_marker("pipeline")
            else 2
        )
    )
    strays = {
        item.nodeid.split("::", 1)[0]
        for item in items
        if "trained_repo" in getattr(item, "fixturenames", ())
        and item.nodeid.split("::", 1)[0] not in TRAINED_REPO_GROUPS
    }
    if strays:
        raise pytest.UsageError(f"add {sorted(strays)} to TRAINED_REPO_GROUPS in tests/conftest.py")


# Other modules whose tests share a module-scoped repo: each is one unit of work, so the repo is built once.
SHARED_REPO_GROUPS = TRAINED_REPO_GROUPS | {"tests/engine/test_resume.py": "two_ranks"}


def pytest_xdist_make_scheduler(config, log):
    """Load balancing, one test at a time, except each group of SHARED_REPO_GROUPS, which is one unit of work
    (the largest units start first, then single tests in collection order), a worker holding as little
    work ahead as xdist allows."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedRepoScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_REPO_GROUPS.get(nodeid.split("::", 1)[0], nodeid)

        def _reschedule(self, node) -> None:
            """xdist queues up to three tests on a worker; one running and the next (which pytest must know
            before it finishes a test) are enough. With three, the worker that took the clean-clone
            reproduction also took the next two minutes-long tests while the other worker ran out of work."""
            if not node.shutting_down and self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    return SharedRepoScheduling(config, log)


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory) -> Iterator[tuple[Path, dict]]:
    """A pipeline repo after one `dvc repro`, shared by every test that starts from a trained pipeline (one
    tiny run costs about two minutes, mostly imports and export). A test may change params, but leaves the
    repo consistent: outputs match dvc.lock, the tree is committed. Its MLflow store keeps every test's runs,
    so tests look for their own runs, not at counts. The first repro's output is in first_repro.txt beside
    it."""
    repo, env = build_pipeline_repo(tmp_path_factory.mktemp("trained") / "repo")
    first = run(["dvc", "repro"], repo, env)
    (repo.parent / "first_repro.txt").write_text(first.stdout + first.stderr)
    yield repo, env
    end_processes_in(repo.parent)  # whatever a test left running there (servers, queue workers)
