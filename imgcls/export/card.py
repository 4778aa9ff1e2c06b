"""The model card: what a model is, how well it does, and every link back to data, weights, params,
code and run (JSON for tools, Markdown for people)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imgcls.config import layout
from imgcls.config.params import Params, params_hash
from imgcls.export.card_markdown import card_markdown
from imgcls.export.formats import CALIBRATION_FILE, CARD_FILE, EXPORT_FILES
from imgcls.files import sha256_file, write_json, write_text
from imgcls.provenance import inputs, store, ui_links


def dvc_hashes(data: str, test_data: str, root: Path | None = None) -> dict:
    """The dvc.lock md5 of each input and output an auditor may want to check, by role (`data` and
    `test_data`: prepare.data and prepare.test_data). `manifest` is the file train and evaluate depend on:
    every prepared image's split, class and SHA-256 (the splits are not separate DVC entries; `prepared`
    covers all three folders)."""
    lock = inputs.dvc_lock_hashes(root)
    return {
        "data": lock.get("prepare", {}).get(data, ""),
        "test_data": lock.get("prepare", {}).get(test_data, ""),
        "prepared": lock.get("prepare", {}).get(layout.PREPARED, ""),
        "manifest": lock.get("train", {}).get(layout.MANIFEST, ""),
        "pretrained": lock.get("pretrain", {}).get(layout.PRETRAINED, ""),
        "model": lock.get("train", {}).get(layout.MODEL, ""),
    }


def environments(export_environment: dict) -> dict:
    """The machine fingerprint of each stage that computed something, as its stage recorded it."""
    found = {stage: json.loads(Path(layout.fingerprint(stage)).read_text()) for stage in layout.FINGERPRINTED}
    return found | {"export": export_environment}


GAPS = ("lowest_recall", "confused_pairs")  # the evaluate report's weakest classes and pairs


def saliency_grids() -> list[dict]:
    """Each Grad-CAM grid evaluate wrote: its path in the repository (a DVC plot), relative to the card in
    models/export, and in the MLflow run."""
    folder = Path(layout.SALIENCY)
    return [
        {
            "file": path.as_posix(),
            "from_card": Path(os.path.relpath(path, layout.EXPORT)).as_posix(),
            "mlflow_artifact": ui_links.picture_name(path),
            "sha256": sha256_file(path),
        }
        for path in sorted(folder.glob("*.png"))
    ]


def model_card(
    params: Params, checkpoint: dict, parity: dict, registered: dict, git: dict, out: Path, environment: dict
) -> dict:
    evaluation = json.loads(Path(layout.EVALUATE_METRICS).read_text())
    report = json.loads(Path(layout.EVALUATE_REPORT).read_text())
    calibration = json.loads((out / CALIBRATION_FILE).read_text())
    return {
        "model": {
            "arch": checkpoint["arch"],
            "class_names": checkpoint["class_names"],
            "files": {
                **{name: sha256_file(out / name) for name in EXPORT_FILES},
                layout.MODEL: sha256_file(layout.MODEL),
            },
            "best_epoch": checkpoint["best_epoch"],
        },
        "preprocessing": checkpoint["preprocessing"],
        "git": git,
        "dvc": dvc_hashes(params.prepare.data, params.prepare.test_data),
        "weights_provenance": checkpoint["provenance"],
        "params": checkpoint["params"],
        "params_sha256": params_hash(checkpoint["params"]),
        "metrics": evaluation,
        "environment": environments(environment),
        "per_class": report["per_class"],
        "gaps": {key: report[key] for key in GAPS},
        "calibration": calibration,
        "saliency": saliency_grids(),
        "parity": parity,
        "mlflow": {"tracking_uri": store.portable_uri(store.tracking_uri()), **registered},
    }


def calibration_record() -> dict:
    """The temperature evaluate chose (fitted on val, or 1 and why), and the test ECE it was judged by (the
    model card shows both)."""
    found = json.loads(Path(layout.EVALUATE_METRICS).read_text())
    missing = [
        k for k in ("temperature", "temperature_fitted", "test_ece", "test_ece_calibrated") if k not in found
    ]
    if missing:
        raise ValueError(
            f"{layout.EVALUATE_METRICS} has no {', '.join(missing)}: it predates this export; "
            "re-run `dvc repro evaluate`"
        )
    fallback = json.loads(Path(layout.EVALUATE_REPORT).read_text())["calibration"]["temperature_fallback"]
    return {
        "temperature": found["temperature"],
        "fitted_on": "val" if found.get("val_images") else "none",
        "temperature_fitted": found["temperature_fitted"],
        "not_used_because": fallback,
        "probabilities": "softmax(logits / temperature)",
        "test_ece_uncalibrated": found["test_ece"],
        "test_ece_calibrated": found["test_ece_calibrated"],
        "test_nll_uncalibrated": found["test_nll"],
        "test_nll_calibrated": found["test_nll_calibrated"],
    }


def write_card(out: Path, card: dict) -> str:
    """model_card.json (for tools) and model_card.md (for people) in `out`; returns the JSON's SHA-256, which
    the MLflow run and the registered version carry."""
    write_json(out / CARD_FILE, card)
    write_text(out / "model_card.md", card_markdown(card))
    return sha256_file(out / CARD_FILE)
