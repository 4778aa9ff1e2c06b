"""The real pipeline: `dvc repro` in a temp git + DVC repo, a real MLflow store, real training."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import run

pytestmark = pytest.mark.pipeline
STAGES = ["prepare", "pretrain", "train", "evaluate", "export"]


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_outputs_rerun_rules_and_mlflow(pipeline_repo):
    repo, env = pipeline_repo
    first = run(["dvc", "repro"], repo, env)
    assert ran(first.stdout) == STAGES

    for path in ("data/prepared/manifest.csv", "data/prepared/excluded.csv", "models/pretrained.pt",
                 "models/model.pt", "plots/train.csv", "plots/confusion.csv", "models/export/model.pt2",
                 "models/export/labels.json", "models/export/preprocessing.json", "models/export/model_card.md"):
        assert (repo / path).is_file(), path
    assert sorted(p.name for p in (repo / "data/prepared").iterdir()) == ["excluded.csv", "manifest.csv",
                                                                         "test", "train", "val"]
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.0 <= evaluation["test_accuracy"] <= 1.0 and 0.0 <= evaluation["test_f1_macro"] <= 1.0
    assert evaluation["test_images"] == 9 and set(evaluation["per_class"]) == {"blue", "green", "red"}
    card = json.loads((repo / "models/export/model_card.json").read_text())
    for figures in card["parity"].values():  # onnx and torch
        assert figures["top1_agreement"] == 1.0 and figures["max_abs_diff"] <= figures["atol"]
    assert card["weights_provenance"]["source"] == "dataset"
    assert len(card["git"]["git_commit"]) == 40 and card["dvc"]["prepared"].endswith(".dir")
    history = (repo / "plots/train.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss") and len(history) == 3  # header + 2 epochs
    shown = run(["dvc", "metrics", "show", "--json"], repo, env).stdout
    assert "test_accuracy" in shown

    again = run(["dvc", "repro"], repo, env)
    assert ran(again.stdout) == [], again.stdout

    first_lr = yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"]
    set_param(repo, "train", "lr", first_lr / 2)
    changed = run(["dvc", "repro"], repo, env)
    assert ran(changed.stdout) == ["train", "evaluate", "export"]

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("image-classifier")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [float(r.data.params["train.lr"]) for r in runs] == [first_lr, first_lr / 2]
    for r in runs:
        assert {"test_accuracy", "test_f1_macro", "val_accuracy", "train_loss", "export_onnx_max_abs_diff",
                "export_torch_top1_agreement"} <= set(r.data.metrics)
        assert r.data.tags["dvc.prepared_md5"].endswith(".dir") and r.data.tags["dvc.pretrained_md5"]
        assert len(r.data.tags["git_commit"]) == 40
    run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    assert run_id == runs[-1].info.run_id
    versions = client.search_model_versions("name='image-classifier'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.run_id for v in versions} == {r.info.run_id for r in runs}
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/image-classifier/2")
    image = next((repo / "data/prepared/test").rglob("*.png"))
    prediction = model.predict(pandas.DataFrame({"image": [image.read_bytes()]}))
    assert prediction.loc[0, "label"] in {"blue", "green", "red"}
    assert abs(prediction[["blue", "green", "red"]].sum(axis=1)[0] - 1.0) < 1e-5
    assert all(v.tags["model_card_sha256"] and "incomplete" not in v.tags for v in versions)

    again = run(["dvc", "repro", "--force", "export"], repo, env)  # the same card again: the same version
    assert "reused image-classifier version 2" in again.stdout + again.stderr
    assert len(client.search_model_versions("name='image-classifier'")) == 2

    set_param(repo, "export", "atol", 0.0)  # an export that fails after reopening the run...
    failed = subprocess.run([sys.executable, "-m", "stages.export"], cwd=repo, env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and "exported model disagrees" in failed.stderr and "Traceback" not in failed.stderr
    assert client.get_run(runs[-1].info.run_id).info.status == "FINISHED"  # ...leaves the good run as it was


def test_temp_experiment_lands_in_the_repo_store(pipeline_repo):
    repo, env = pipeline_repo
    run(["dvc", "exp", "run", "--temp", "-S", "train.lr=0.0007", "-n", "lr-7e-4"], repo, env)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("image-classifier")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.data.params["train.lr"] == "0.0007"
    assert found.data.tags["dvc.experiment"] == "lr-7e-4" and found.info.run_name.startswith("train-lr-7e-4-")
    assert "test_accuracy" in found.data.metrics
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "evaluate")}
    assert "evaluate/confusion_matrix.png" in artifacts
    assert not (repo / "models/model.pt").exists()  # it ran in a temporary copy, not the workspace
