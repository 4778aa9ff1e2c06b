"""The real pipeline: `dvc repro` in a temp git + DVC repo, a real MLflow store, real training."""

from __future__ import annotations

import json
import pickle
import re
import sys

import mlflow
import pandas
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import attempt, digest, run, set_param, split_size

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)
STAGES = ["prepare", "pretrain", "train", "evaluate", "export"]


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def runs_of(client: MlflowClient) -> dict[str, object]:
    experiment = client.get_experiment_by_name("image-classifier")
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}


def test_repro_outputs_and_nothing_reruns_unchanged(trained_repo):
    repo, env = trained_repo
    assert ran((repo.parent / "first_repro.txt").read_text()) == STAGES
    for path in (
        "data/prepared/manifest.csv",
        "data/prepared/excluded.csv",
        "models/pretrained.pt",
        "models/model.pt",
        "plots/train.csv",
        "plots/confusion.csv",
        "models/export/model.pt2",
        "models/export/labels.json",
        "models/export/preprocessing.json",
        "models/export/model_card.md",
    ):
        assert (repo / path).is_file(), path
    assert sorted(p.name for p in (repo / "data/prepared").iterdir()) == [
        "excluded.csv",
        "manifest.csv",
        "shaping.json",
        "test",
        "train",
        "val",
    ]
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    report = json.loads((repo / "reports/evaluate.json").read_text())
    assert 0.0 <= evaluation["test_accuracy"] <= 1.0 and 0.0 <= evaluation["test_f1_macro"] <= 1.0
    tests = split_size(repo, "test")
    assert evaluation["test_images"] == tests and set(report["per_class"]) == {"blue", "green", "red"}
    assert not {"per_class", "lowest_recall", "confused_pairs"} & set(evaluation)  # detail is no metric
    low, high = evaluation["test_accuracy_ci95"].values()
    assert low <= evaluation["test_accuracy"] <= high
    card = json.loads((repo / "models/export/model_card.json").read_text())
    for figures in card["parity"].values():  # onnx and torch
        assert figures["top1_agreement"] == 1.0 and figures["max_abs_diff"] <= figures["atol"]
    assert card["weights_provenance"]["source"] == "dataset"
    assert len(card["git"]["git_commit"]) == 40 and card["dvc"]["prepared"].endswith(".dir")
    assert all(card["dvc"].values()), f"model card dvc md5s left empty: {card['dvc']}"
    assert card["git"]["git_dirty"] is False
    history = (repo / "plots/train.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss") and len(history) == 3  # header + 2 epochs
    shown = run(["dvc", "metrics", "show", "--json"], repo, env).stdout
    assert "test_accuracy" in shown and "test_ece_calibrated" in shown and "lowest_recall" not in shown

    # calibration, gaps and saliency: in the metrics, as DVC plots, in the card and in the MLflow run
    assert evaluation["temperature"] > 0 and 0 <= evaluation["test_ece_calibrated"] <= 1
    assert sum(r["support"] for r in report["lowest_recall"].values()) <= tests
    wrong = round((1 - evaluation["test_accuracy"]) * tests)
    assert sum(p["count"] for p in report["confused_pairs"].values()) <= wrong
    for name in ("uncalibrated.csv", "calibrated.csv", "reliability.png"):
        assert (repo / "plots/reliability" / name).stat().st_size > 0, name
    grids = sorted(p.name for p in (repo / "plots/saliency").iterdir())
    assert grids and all(name.endswith(".png") for name in grids)
    assert len(grids) == (min(len(report["confused_pairs"]), 6) or 1)
    calibration = json.loads((repo / "models/export/calibration.json").read_text())
    assert calibration["temperature"] == evaluation["temperature"] == card["calibration"]["temperature"]
    assert card["calibration"]["test_ece_uncalibrated"] == evaluation["test_ece"]
    assert card["gaps"]["lowest_recall"] == report["lowest_recall"]
    assert [grid["file"] for grid in card["saliency"]] == [f"plots/saliency/{name}" for name in grids]
    markdown = (repo / "models/export/model_card.md").read_text()
    assert "## Where it falls short" in markdown and "## Calibration" in markdown
    assert all(f"(../../plots/saliency/{name})" in markdown for name in grids)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    logged = {a.path for a in client.list_artifacts(run_id, "evaluate")}
    assert {"evaluate/metrics.json", "evaluate/report.json"} <= logged
    pictures = {a.path for a in client.list_artifacts(run_id)}  # at the root, named alike in every run
    assert {
        "confusion_matrix.png",
        "reliability.png",
        *(f"saliency_{name[:2]}.png" for name in grids),
    } <= pictures
    assert [grid["mlflow_artifact"] for grid in card["saliency"]] == [
        f"saliency_{name[:2]}.png" for name in grids
    ]
    assert client.get_run(run_id).data.metrics["test_ece_calibrated"] == evaluation["test_ece_calibrated"]

    again = run(["dvc", "repro"], repo, env)
    assert ran(again.stdout) == [], again.stdout


def test_param_change_reruns_downstream_and_each_run_is_one_version(trained_repo):
    """A changed lr re-runs train, evaluate and export into a new run and version; with runtime.allow_dirty
    the uncommitted file is recorded; exporting the same card again reuses its version; a failed export leaves
    the run as it was. Leaves the repo consistent at the new lr (`dvc repro` has nothing to do)."""
    repo, env = trained_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    before, versions_before = runs_of(client), client.search_model_versions("name='image-classifier'")
    first_lr, atol = (
        yaml.safe_load((repo / "params.yaml").read_text())[k][v]
        for k, v in [("train", "lr"), ("export", "atol")]
    )
    set_param(repo, "train", "lr", first_lr / 2)
    set_param(repo, "runtime", "allow_dirty", True)
    (repo / "scratch.py").write_text("# uncommitted code\n")
    try:
        changed = run(["dvc", "repro"], repo, env)
        assert ran(changed.stdout) == ["train", "evaluate", "export"]

        [new] = [r for run_id, r in runs_of(client).items() if run_id not in before]
        assert float(new.data.params["train.lr"]) == first_lr / 2
        assert {
            "test_accuracy",
            "test_f1_macro",
            "test_accuracy_ci95_low",
            "val_accuracy",
            "train_loss",
            "export_onnx_max_abs_diff",
            "export_torch_top1_agreement",
        } <= set(new.data.metrics)
        assert new.data.tags["dvc.prepared_md5"].endswith(".dir") and new.data.tags["dvc.pretrained_md5"]
        assert len(new.data.tags["git_commit"]) == 40 and new.data.tags["git_dirty"] == "true"
        for library in ("torch", "torchvision", "numpy", "pillow", "mlflow", "dvc"):
            assert new.data.tags[f"version.{library}"][0].isdigit()
        assert new.data.tags["env.device"] == "cpu" and new.data.tags["seed"] == "42"
        assert new.data.tags["env.pinned"] == "true" and new.data.tags["env.kernel_isa"] == "AVX2"
        assert new.info.status == "FINISHED" and new.info.run_name.startswith("train-repro-")
        assert json.loads((repo / "models/run.json").read_text())["run_id"] == new.info.run_id
        card = json.loads((repo / "models/export/model_card.json").read_text())
        assert card["git"]["git_dirty"] is True and card["git"]["git_dirty_paths"] == ["scratch.py"]

        versions = client.search_model_versions("name='image-classifier'")
        [version] = [v for v in versions if v.version not in {w.version for w in versions_before}]
        assert version.run_id == new.info.run_id
        assert version.tags["model_card_sha256"] and "incomplete" not in version.tags
        mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
        model = mlflow.pyfunc.load_model(f"models:/image-classifier/{version.version}")
        image = next((repo / "data/prepared/test").rglob("*.jpg"))
        prediction = model.predict(pandas.DataFrame({"image": [image.read_bytes()]}))
        assert prediction.loc[0, "label"] in {"blue", "green", "red"}
        assert abs(prediction[["blue", "green", "red"]].sum(axis=1)[0] - 1.0) < 1e-5

        again = run(["dvc", "repro", "--force", "--single-item", "export"], repo, env)  # the same card again
        assert ran(again.stdout) == ["export"]
        assert f"reused image-classifier version {version.version}" in again.stdout + again.stderr
        assert len(client.search_model_versions("name='image-classifier'")) == len(versions)

        set_param(repo, "export", "atol", 0.0)  # an export that fails after reopening the run...
        failed = attempt([sys.executable, "-m", "stages.export"], cwd=repo, env=env)
        assert failed.returncode == 1 and "exported model disagrees" in failed.stderr
        assert "Traceback" not in failed.stderr
        assert client.get_run(new.info.run_id).info.status == "FINISHED"  # ...leaves the good run as it was
    finally:
        (repo / "scratch.py").unlink(missing_ok=True)
        set_param(repo, "export", "atol", atol)
    after = run(["dvc", "repro"], repo, env)
    assert ran(after.stdout) == [], after.stdout  # the failed export left the outputs as they were


def test_temp_experiment_lands_in_the_repo_store(trained_repo):
    repo, env = trained_repo
    workspace_model = digest(repo / "models/model.pt")
    run(["dvc", "exp", "run", "--temp", "-S", "train.lr=0.0007", "-n", "lr-7e-4", "evaluate"], repo, env)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    [found] = [r for r in runs_of(client).values() if r.data.tags.get("dvc.experiment") == "lr-7e-4"]
    assert found.data.params["train.lr"] == "0.0007" and found.info.run_name.startswith("train-lr-7e-4-")
    assert "test_accuracy" in found.data.metrics
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert "confusion_matrix.png" in artifacts
    # it ran in a temporary copy, not the workspace
    assert digest(repo / "models/model.pt") == workspace_model


def test_no_param_can_point_an_output_outside_and_a_failed_stage_keeps_the_last_outputs(
    trained_repo, tmp_path
):
    """`export.out: ../victim` once made DVC delete ../victim before export ran: outputs are no params now, so
    the key is refused and nothing outside is touched. A model.pt swapped for a pickle is refused in one line,
    and the export it would have replaced stays whole (DVC keeps it: persist)."""
    repo, env = trained_repo
    victim = repo.parent / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    params = (repo / "params.yaml").read_text()
    export = {p.name: digest(p) for p in (repo / "models/export").iterdir()}
    try:
        (repo / "params.yaml").write_text(params.replace("\nexport:\n", "\nexport:\n  out: ../victim\n"))
        refused = attempt(["dvc", "repro"], repo, env)
        assert refused.returncode != 0 and "unknown key(s) export.out" in refused.stdout + refused.stderr
    finally:
        (repo / "params.yaml").write_text(params)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert {p.name: digest(p) for p in (repo / "models/export").iterdir()} == export

    model = repo / "models/model.pt"
    original = model.read_bytes()
    try:
        model.write_bytes(pickle.dumps({"state_dict": object()}))  # a pickle with a global: not plain tensors
        failed = attempt(["dvc", "repro", "--force", "--single-item", "export"], repo, env)
        assert (
            failed.returncode != 0 and "models/model.pt is not a checkpoint of plain tensors" in failed.stderr
        )
        assert "Traceback" not in failed.stdout + failed.stderr
    finally:
        model.write_bytes(original)
    assert {p.name: digest(p) for p in (repo / "models/export").iterdir()} == export  # the last export, whole
    assert ran(run(["dvc", "repro"], repo, env).stdout) == []


def test_a_damaged_store_stops_evaluate_before_it_writes_and_lineage_in_one_line(trained_repo, tmp_path):
    repo, env = trained_repo
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not sqlite" * 100)
    broken = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{damaged}"}
    metrics = digest(repo / "metrics/evaluate.json")
    evaluate = attempt([sys.executable, "-m", "stages.evaluate"], repo, broken)
    assert evaluate.returncode == 1 and "damaged.db cannot be used" in evaluate.stderr
    assert "Traceback" not in evaluate.stderr and digest(repo / "metrics/evaluate.json") == metrics
    lineage = attempt([sys.executable, "-m", "imgcls", "lineage"], repo, broken)
    assert (
        lineage.returncode == 1
        and "damaged.db cannot be used" in lineage.stdout
        and "Traceback" not in lineage.stdout + lineage.stderr
    )
    image = next((repo / "data/prepared/test").rglob("*.jpg"))
    predicted = attempt(
        [sys.executable, "-m", "imgcls", "predict", "models:/image-classifier/1", str(image)], repo, broken
    )
    assert predicted.returncode == 1 and "damaged.db cannot be used" in predicted.stderr
    assert "Traceback" not in predicted.stderr
