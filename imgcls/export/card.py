"""The model card: what a model is, how well it does, and every link back to data, weights, params,
code and run (JSON for tools, Markdown for people)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imgcls.config import layout
from imgcls.config.params import Params
from imgcls.export.formats import CALIBRATION_FILE, CARD_FILE, EXPORT_FILES
from imgcls.files import sha256_file, write_json, write_text
from imgcls.provenance import inputs, store, ui_links


def dvc_hashes(params: Params, root: Path | None = None) -> dict:
    """The dvc.lock md5 of each input and output an auditor may want to check, by role. `manifest` is the file
    train and evaluate depend on: every prepared image's split, class and SHA-256 (the splits are not separate
    DVC entries; `prepared` covers all three folders)."""
    lock = inputs.dvc_lock_hashes(root)
    return {"data": lock.get("prepare", {}).get(params.prepare.data, ""),
            "test_data": lock.get("prepare", {}).get(params.prepare.test_data, ""),
            "prepared": lock.get("prepare", {}).get(layout.PREPARED, ""),
            "manifest": lock.get("train", {}).get(layout.MANIFEST, ""),
            "pretrained": lock.get("pretrain", {}).get(layout.PRETRAINED, ""),
            "model": lock.get("train", {}).get(layout.MODEL, "")}


def environments(export_environment: dict) -> dict:
    """The machine fingerprint of each stage that computed something, as its stage recorded it."""
    found = {stage: json.loads(Path(layout.fingerprint(stage)).read_text()) for stage in ("pretrain", "train", "evaluate")}
    return found | {"export": export_environment}


GAPS = ("lowest_recall", "confused_pairs")


def saliency_grids() -> list[dict]:
    """Each Grad-CAM grid evaluate wrote: its path in the repository (a DVC plot), relative to the card in
    models/export, and in the MLflow run."""
    folder = Path(layout.SALIENCY)
    return [{"file": path.as_posix(), "from_card": Path(os.path.relpath(path, layout.EXPORT)).as_posix(),
             "mlflow_artifact": ui_links.picture_name(path), "sha256": sha256_file(path)}
            for path in sorted(folder.glob("*.png"))]


def model_card(params: Params, checkpoint: dict, parity: dict, registered: dict, git: dict, out: Path,
               environment: dict) -> dict:
    evaluation = json.loads(Path(layout.EVALUATE_METRICS).read_text())
    report = json.loads(Path(layout.EVALUATE_REPORT).read_text())
    calibration = json.loads((out / CALIBRATION_FILE).read_text())
    return {
        "model": {"arch": checkpoint["arch"], "class_names": checkpoint["class_names"],
                  "files": {**{name: sha256_file(out / name) for name in EXPORT_FILES},
                            layout.MODEL: sha256_file(layout.MODEL)},
                  "best_epoch": checkpoint["best_epoch"]},
        "preprocessing": checkpoint["preprocessing"],
        "git": git,
        "dvc": dvc_hashes(params),
        "weights_provenance": checkpoint["provenance"],
        "params": checkpoint["params"],
        "params_sha256": inputs.params_hash(checkpoint["params"]),
        "metrics": evaluation,
        "environment": environments(environment),
        "per_class": report["per_class"],
        "gaps": {key: report[key] for key in GAPS},
        "calibration": calibration,
        "saliency": saliency_grids(),
        "parity": parity,
        "mlflow": {"tracking_uri": store.portable_uri(store.tracking_uri()), **registered},
    }


def card_markdown(card: dict) -> str:
    m, metrics = card["model"], card["metrics"]
    lines = [f"# Model card: {m['arch']} on {len(m['class_names'])} classes", "",
             f"Classes: {', '.join(m['class_names'])}", "",
             "| test metric | value | 95% interval (bootstrap over test images) |", "|---|---|---|"]
    for key, value in metrics.items():
        if key.endswith("_ci95") or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        interval = metrics.get(f"{key}_ci95")
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        bounds = f"{interval['low']:.4f} – {interval['high']:.4f}" if interval else ""
        lines.append(f"| {key} | {shown} | {bounds} |")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} | {r['support']:.0f} |"
              for name, r in card["per_class"].items()]
    lines += gaps_markdown(card) + calibration_markdown(card["calibration"])
    lines += ["", "## Lineage", "",
              f"- git commit: `{card['git']['git_commit']}` (dirty: {card['git']['git_dirty']}); trained at "
              f"`{card['git'].get('train_commit') or card['git']['git_commit']}`",
              f"- MLflow run: `{card['mlflow']['run_id']}`, registered as `{card['mlflow']['name']}` (the "
              "version carries this card's SHA-256 as its `model_card_sha256` tag)",
              f"- starting weights: {card['weights_provenance']['source']}: {card['weights_provenance']['origin']}",
              f"- params sha256: `{card['params_sha256']}`"]
    lines += [f"- dvc md5 of {name}: `{value}`" for name, value in card["dvc"].items()]
    lines += [f"- sha256 of {name}: `{value}`" for name, value in m["files"].items()]
    lines += ["", "## Export parity", "", "Against `models/model.pt` (eager PyTorch) on the real test images:", "",
              "| runtime | images | max abs logit diff | tolerance | top-1 agreement |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {p['images']} | {p['max_abs_diff']:.2e} | {p['atol']} | {p['top1_agreement']:.4f} |"
              for name, p in card["parity"].items()]
    lines += ["", f"ONNX opset {card['params']['export']['onnx_opset']}, input `images` float32 NCHW, dynamic batch; "
              "output `logits` (softmax for probabilities).", "",
              "## Preprocessing", "", "```json", json.dumps(card["preprocessing"], indent=2), "```", "",
              "## Where it was computed", "",
              "| stage | reproducible (pinned) | CPU | kernels | BLAS | threads | device | torch |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {stage} | {e['reproducible']} ({e['pinned']}) | {e['cpu']} ({e['cpu_isa']}) | {e['kernel_isa']} | "
              f"{e['blas']} | {e['threads']} | {e['gpu'] or e['device']} | {e['torch']} |"
              for stage, e in card["environment"].items()]
    lines += ["", "Verify this card: `python -m imgcls lineage models/export`", ""]
    return "\n".join(lines)


def gaps_markdown(card: dict) -> list[str]:
    gaps = card["gaps"]
    lines = ["", "## Where it falls short", "", "Lowest recall on the test split:", "",
             "| class | recall | correct / test images |", "|---|---|---|"]
    lines += [f"| {name} | {r['recall']:.3f} | {r['correct']} / {r['support']} |"
              for name, r in gaps["lowest_recall"].items()]
    lines += ["", "Most frequent confusions:", "", "| actual -> predicted | images | of the actual class |",
              "|---|---|---|"]
    lines += [f"| {pair} | {p['count']} | {p['count']} / {p['of_actual']} ({p['share_of_actual']:.1%}) |"
              for pair, p in gaps["confused_pairs"].items()] or ["| (none: no test image is misclassified) | | |"]
    if card["saliency"]:
        lines += ["", "Grad-CAM grids of these confusions (where the model looked; in the MLflow run and as DVC "
                  "plots, `dvc plots show`):", ""]
        lines += [f"- [{grid['file']}]({grid['from_card']}) (MLflow artifact `{grid['mlflow_artifact']}`)"
                  for grid in card["saliency"]]
    return lines


def calibration_markdown(calibration: dict) -> list[str]:
    scaled = calibration["fitted_on"] != "none"
    fallback = calibration.get("not_used_because")
    return ["", "## Calibration", "",
            (f"Temperature scaling: the T fitted on the val split ({calibration['temperature_fitted']:.4f}) is not "
             f"used, because {fallback}; T = 1 is exported: probabilities are softmax(logits)." if fallback else
             f"Temperature scaling, fitted on the val split: T = {calibration['temperature']:.4f}. The exported "
             "model's logits are unchanged; its probabilities (predict, serving) are softmax(logits / T)."
             if scaled else "Temperature scaling is off (`evaluate.temperature_scaling: false`): probabilities "
             "are softmax(logits)."), "",
            "| on the test split | uncalibrated | calibrated |", "|---|---|---|",
            f"| expected calibration error (15 bins) | {calibration['test_ece_uncalibrated']:.4f} | "
            f"{calibration['test_ece_calibrated']:.4f} |",
            f"| negative log-likelihood | {calibration['test_nll_uncalibrated']:.4f} | "
            f"{calibration['test_nll_calibrated']:.4f} |"]


def calibration_record() -> dict:
    """The temperature evaluate chose (fitted on val, or 1 and why), and the test ECE it was judged by (the model
    card shows both)."""
    found = json.loads(Path(layout.EVALUATE_METRICS).read_text())
    missing = [k for k in ("temperature", "temperature_fitted", "test_ece", "test_ece_calibrated") if k not in found]
    if missing:
        raise ValueError(f"{layout.EVALUATE_METRICS} has no {', '.join(missing)}: it predates this export; "
                         "re-run `dvc repro evaluate`")
    fallback = json.loads(Path(layout.EVALUATE_REPORT).read_text())["calibration"]["temperature_fallback"]
    return {"temperature": found["temperature"], "fitted_on": "val" if found.get("val_images") else "none",
            "temperature_fitted": found["temperature_fitted"], "not_used_because": fallback,
            "probabilities": "softmax(logits / temperature)",
            "test_ece_uncalibrated": found["test_ece"], "test_ece_calibrated": found["test_ece_calibrated"],
            "test_nll_uncalibrated": found["test_nll"], "test_nll_calibrated": found["test_nll_calibrated"]}


def write_card(out: Path, card: dict) -> str:
    """model_card.json (for tools) and model_card.md (for people) in `out`; returns the JSON's SHA-256, which
    the MLflow run and the registered version carry."""
    write_json(out / CARD_FILE, card)
    write_text(out / "model_card.md", card_markdown(card))
    return sha256_file(out / CARD_FILE)
