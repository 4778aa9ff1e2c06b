"""Reproducibility and lineage on the real pipeline: same inputs give the same bytes, and any swap of
model, data or card breaks a named link."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, attempt, digest, run, set_param

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def lineage(repo, env) -> subprocess.CompletedProcess:
    return attempt([sys.executable, "-m", "imgcls", "lineage", "models/export"], cwd=repo, env=env)


def test_same_inputs_same_bytes_and_lineage_catches_swaps(trained_repo):
    repo, env = trained_repo
    outputs = [
        "models/model.pt",
        "models/pretrained.pt",
        "metrics/evaluate.json",
        "metrics/train.json",
        "metrics/prepare.json",
        "metrics/pretrain.json",
        "plots/train.csv",
        "plots/confusion.csv",
    ]
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
    set_param(repo, "runtime", "num_workers", 1)
    stage = attempt([sys.executable, "-m", "stages.train"], cwd=repo, env=env)
    assert stage.returncode == 1
    assert f"cannot read {split_file.relative_to(repo)}" in stage.stderr and "Traceback" not in stage.stderr
    set_param(repo, "runtime", "num_workers", 0)
    split_file.write_bytes(original)

    card_path = repo / "models/export/model_card.json"
    original = card_path.read_text()
    card = json.loads(original)
    card["metrics"]["test_accuracy"] = 1.0
    card_path.write_text(json.dumps(card, indent=2))
    broken = lineage(repo, env)
    assert broken.returncode == 1 and "model_card_sha256 (card edited?)" in broken.stdout
    for damaged, kind in [
        (b"", "empty"),
        (original.encode()[:200], "JSONDecodeError"),
        (b"\x89PNG\x00\xff", ""),
    ]:
        card_path.write_bytes(damaged)  # empty, truncated, binary: one line each, never a traceback
        broken = lineage(repo, env)
        assert (
            broken.returncode == 1
            and "is not a readable model card" in broken.stdout
            and kind in broken.stdout
        )
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
    set_param(repo, "runtime", "allow_dirty", False)
    (repo / "scratch.py").write_text("# uncommitted code\n")
    try:
        failed = attempt([sys.executable, "-m", "stages.prepare"], cwd=repo, env=env)
    finally:
        (repo / "scratch.py").unlink()
        (repo / "params.yaml").write_text(params)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert (
        "uncommitted changes in scratch.py" in failed.stderr and "git add -A && git commit" in failed.stderr
    )
    assert "runtime.allow_dirty: true" in failed.stderr
    assert "excluded) from" not in failed.stderr  # prepare's own log line: it never started reading
    assert digest(repo / "data/prepared/manifest.csv") == manifest
    assert lineage(repo, env).returncode == 0


def commit(repo, env, message: str) -> None:
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", message, "--allow-empty"], repo, env)


def test_an_export_only_rerun_keeps_lineage_true_and_changed_training_code_breaks_it(trained_repo):
    """A commit that touches export code re-runs export alone: the card's commit is newer than the run's, and
    lineage proves train's definition, code and params did not change between the two. Export re-run by hand
    on a commit whose train code changed is caught."""
    repo, env = trained_repo
    commit(repo, env, "results")
    card_code, train_code = repo / "imgcls/export/card_markdown.py", repo / "stages/train.py"
    originals = card_code.read_text(), train_code.read_text()
    try:
        card_code.write_text(originals[0] + "\n# a comment\n")
        commit(repo, env, "export code only")
        rerun = run(["dvc", "repro"], repo, env)
        assert "Running stage 'export'" in rerun.stdout and "Running stage 'train'" not in rerun.stdout
        commit(repo, env, "export re-run")
        card = json.loads((repo / "models/export/model_card.json").read_text())
        assert card["git"]["train_commit"] != card["git"]["git_commit"]
        good = lineage(repo, env)
        assert good.returncode == 0 and "8/8 links verified" in good.stdout, good.stdout
        assert "train's code unchanged at the card's commit" in good.stdout

        train_code.write_text(originals[1] + "\n# changed\n")
        card_code.write_text(originals[0] + "\n# another comment\n")
        commit(repo, env, "train code too")
        run(["dvc", "repro", "--single-item", "export"], repo, env)  # export alone, over a stale model
        broken = lineage(repo, env)
        assert (
            broken.returncode == 1 and "train's code changed between them: stages/train.py" in broken.stdout
        )
    finally:
        card_code.write_text(originals[0])
        train_code.write_text(originals[1])
        commit(repo, env, "back")
        run(["dvc", "repro"], repo, env)  # train's code is as it was: its outputs are still valid
        commit(repo, env, "results again")
    assert lineage(repo, env).returncode == 0


def test_a_deleted_run_breaks_lineage_and_stops_later_stages(trained_repo):
    from mlflow.tracking import MlflowClient

    repo, env = trained_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    client.delete_run(run_id)  # what the UI's delete does
    try:
        broken = lineage(repo, env)
        assert broken.returncode == 1 and f"run {run_id} is deleted" in broken.stdout
        assert f"mlflow runs restore --run-id {run_id}" in broken.stdout
        export = attempt([sys.executable, "-m", "stages.export"], repo, env)
        assert export.returncode == 1 and "is deleted" in export.stderr and "Traceback" not in export.stderr
    finally:
        client.restore_run(run_id)
    assert lineage(repo, env).returncode == 0


def test_a_moved_repository_says_how_to_repair_its_store_and_then_verifies(trained_repo, tmp_path):
    repo, env = trained_repo
    first = tmp_path / "first"
    shutil.copytree(repo, first, symlinks=True)
    # a copy: point it at itself
    run([sys.executable, "-m", "imgcls", "lineage", "--relocate-store"], first, env)
    moved = tmp_path / "moved"
    first.rename(moved)  # now the store names a folder that no longer exists
    broken = lineage(moved, env)
    assert (
        broken.returncode == 1
        and "(moved or copied since): run `python -m imgcls lineage --relocate-store`" in broken.stdout
    ), broken.stdout
    image = sorted((moved / "data/prepared/test").rglob("*.jpg"))[0]
    version = json.loads((moved / "models/export/registry.json").read_text())["version"]
    predicted = attempt(
        [sys.executable, "-m", "imgcls", "predict", f"models:/image-classifier/{version}", str(image)],
        moved,
        env,
    )
    assert (
        predicted.returncode == 1
        and "--relocate-store" in predicted.stderr
        and "Traceback" not in predicted.stderr
    )
    repaired = run([sys.executable, "-m", "imgcls", "lineage", "--relocate-store"], moved, env)
    assert "rewritten to" in repaired.stdout and "8/8 links verified" in repaired.stdout, repaired.stdout
    run(
        [sys.executable, "-m", "imgcls", "predict", f"models:/image-classifier/{version}", str(image)],
        moved,
        env,
    )


def test_a_card_made_before_a_param_was_added_still_traces_to_dvc_lock(tmp_path):
    """Cards outlive the code that made them: the params are read as that code wrote them, not validated
    against today's keys (their hash is checked instead)."""
    import yaml

    from imgcls.provenance.lineage import check_lock, trace

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["train"]["distributed"]["max_restarts"]  # added after this card was made
    lock = {"stages": {"prepare": {"deps": [{"path": params["prepare"]["data"], "md5": "a.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    card = {"params": params, "dvc": {"data": "a.dir"}}
    assert check_lock(tmp_path, card) == ("model card -> dvc.lock", True, "1 hashes agree")
    export = tmp_path / "export"
    export.mkdir()
    (export / "model_card.json").write_text(json.dumps({"params": {"prepare": {}}}))
    [(link, holds, detail)] = trace(export, tmp_path)
    assert link == "model card" and not holds and "KeyError" in detail
