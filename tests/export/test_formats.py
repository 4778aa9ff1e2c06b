"""Deployable exports: ONNX and torch.export parity, both runtimes agreeing through the predict command,
temperature-scaled probabilities over unchanged logits, and tampered files refused before loading."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.helpers import attempt, predict, registered, split_size

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def test_export_has_both_runtimes_with_parity(trained_repo):
    repo, _ = trained_repo
    card = json.loads((repo / "models/export/model_card.json").read_text())
    assert set(card["parity"]) == {"onnx", "torch"}
    for figures in card["parity"].values():
        assert figures["images"] == split_size(repo, "test") and figures["top1_agreement"] == 1.0
        assert figures["max_abs_diff"] <= figures["atol"] == 1e-4
    assert set(card["model"]["files"]) == {
        "model.pt2",
        "model.onnx",
        "labels.json",
        "preprocessing.json",
        "calibration.json",
        "models/model.pt",
    }
    # relative: a copied repo checks its own store
    assert card["mlflow"]["tracking_uri"] == "sqlite:///mlflow.db"


def test_predict_both_runtimes_agree_and_report_unreadable_files(trained_repo, tmp_path):
    repo, env = trained_repo
    folder = tmp_path / "incoming"
    folder.mkdir()
    for image in sorted((repo / "data/prepared/test").rglob("*.jpg")):
        (folder / f"{image.parent.name}-{image.name}").write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("hello")
    onnx = predict(repo, env, "models/export", str(folder), "--runtime", "onnx", "--batch-size", "4")
    program = predict(repo, env, "models/export", str(folder), "--runtime", "torch", "--batch-size", "4")
    tests = split_size(repo, "test")
    assert len(onnx) == len(program) == tests + 2
    assert onnx[str(folder / "broken.png")]["error"].startswith("not_image")
    assert onnx[str(folder / "notes.txt")]["error"].startswith("not_image")
    good = [p for p, row in onnx.items() if not row["error"]]
    assert len(good) == tests
    for path in good:
        assert onnx[path]["label"] == program[path]["label"]
        assert abs(float(onnx[path]["probability"]) - float(program[path]["probability"])) < 1e-4
        assert len(onnx[path]["top_k"].split(";")) == 3
    correct = sum(onnx[p]["label"] == p.rsplit("/", 1)[1].split("-")[0] for p in good)
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert correct == round(evaluation["test_accuracy"] * tests)  # same images, same answers as evaluate

    via_registry = predict(
        repo,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"},
        registered(repo),
        good[0],
        "--runtime",
        "torch",
    )
    assert via_registry[good[0]]["label"] == program[good[0]]["label"]


def test_probabilities_are_temperature_scaled_and_logits_are_not(trained_repo, tmp_path):
    """The export's logits are the model's (parity holds on them); predict and serving divide them by the T
    evaluate fitted on val before the softmax."""
    import numpy as np
    import torch

    from imgcls.data.images import decode_image
    from imgcls.data.transforms import eval_transform
    from imgcls.export.formats import load_runtime

    repo, env = trained_repo
    export = repo / "models/export"
    temperature = json.loads((export / "calibration.json").read_text())["temperature"]
    assert temperature != 1.0  # fitted: the tiny model's val NLL is not minimal at T = 1
    files = sorted((repo / "data/prepared/test").rglob("*.jpg"))
    transform = eval_transform(json.loads((export / "preprocessing.json").read_text()))
    batch = torch.stack([transform(decode_image(f.read_bytes())) for f in files]).numpy()
    logits = load_runtime(export, "onnx")(batch)
    scaled = torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy()
    rows = predict(repo, env, "models/export", *map(str, files), "--runtime", "onnx")
    for file, expected in zip(files, scaled):
        assert float(rows[str(file)]["probability"]) == pytest.approx(float(expected.max()), abs=2e-6)
    raw = torch.softmax(torch.from_numpy(logits), 1).numpy().max(1)
    assert not np.allclose(raw, scaled.max(1), atol=1e-3)  # the scaling shows in what users read


def test_swapped_export_file_is_refused_before_loading(trained_repo, tmp_path):
    repo, env = trained_repo
    copy = tmp_path / "export"
    shutil.copytree(repo / "models/export", copy)
    (copy / "model.pt2").write_bytes((copy / "model.pt2").read_bytes() + b"payload")
    image = next((repo / "data/prepared/test").rglob("*.jpg"))
    result = attempt(
        [sys.executable, "-m", "imgcls", "predict", str(copy), str(image), "--runtime", "torch"],
        cwd=repo,
        env=env,
    )
    assert result.returncode == 1 and "model.pt2 does not match its model card" in result.stderr
    assert "Traceback" not in result.stderr
    shutil.copy(repo / "models/export/model.pt2", copy / "model.pt2")
    (copy / "calibration.json").write_text(json.dumps({"temperature": 0.01}))  # would fake high confidence
    result = attempt([sys.executable, "-m", "imgcls", "predict", str(copy), str(image)], cwd=repo, env=env)
    assert result.returncode == 1 and "calibration.json does not match its model card" in result.stderr
