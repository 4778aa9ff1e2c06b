"""The model card as a page for people: model_card.md, rendered from the card's JSON."""

from __future__ import annotations

import json


def card_markdown(card: dict) -> str:
    m, metrics = card["model"], card["metrics"]
    lines = [
        f"# Model card: {m['arch']} on {len(m['class_names'])} classes",
        "",
        f"Classes: {', '.join(m['class_names'])}",
        "",
        "| test metric | value | 95% interval (bootstrap over test images) |",
        "|---|---|---|",
    ]
    for key, value in metrics.items():
        if key.endswith("_ci95") or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        interval = metrics.get(f"{key}_ci95")
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        bounds = f"{interval['low']:.4f} – {interval['high']:.4f}" if interval else ""
        lines.append(f"| {key} | {shown} | {bounds} |")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [
        f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} | {r['support']:.0f} |"
        for name, r in card["per_class"].items()
    ]
    lines += gaps_markdown(card) + calibration_markdown(card["calibration"])
    lines += [
        "",
        "## Lineage",
        "",
        f"- git commit: `{card['git']['git_commit']}` (dirty: {card['git']['git_dirty']}); trained at "
        f"`{card['git'].get('train_commit') or card['git']['git_commit']}`",
        f"- MLflow run: `{card['mlflow']['run_id']}`, registered as `{card['mlflow']['name']}` (the "
        "version carries this card's SHA-256 as its `model_card_sha256` tag)",
        f"- starting weights: {card['weights_provenance']['source']}: {card['weights_provenance']['origin']}",
        f"- params sha256: `{card['params_sha256']}`",
    ]
    lines += [f"- dvc md5 of {name}: `{value}`" for name, value in card["dvc"].items()]
    lines += [f"- sha256 of {name}: `{value}`" for name, value in m["files"].items()]
    lines += [
        "",
        "## Export parity",
        "",
        "Against `models/model.pt` (eager PyTorch) on the real test images:",
        "",
        "| runtime | images | max abs logit diff | tolerance | top-1 agreement |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {p['images']} | {p['max_abs_diff']:.2e} | {p['atol']} | {p['top1_agreement']:.4f} |"
        for name, p in card["parity"].items()
    ]
    lines += [
        "",
        f"ONNX opset {card['params']['export']['onnx_opset']}, input `images` float32 NCHW, dynamic batch; "
        "output `logits` (softmax for probabilities).",
        "",
        "## Preprocessing",
        "",
        "```json",
        json.dumps(card["preprocessing"], indent=2),
        "```",
        "",
        "## Where it was computed",
        "",
        "| stage | reproducible (pinned) | CPU | kernels | convolutions | BLAS | threads | device | torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {stage} | {e['reproducible']} ({e['pinned']}) | {e['cpu']} ({e['cpu_isa']}) | {e['kernel_isa']} "
        f"| oneDNN {e.get('onednn_isa', 'off')} | {e['blas']} | {e['threads']} | {e['gpu'] or e['device']} "
        f"| {e['torch']} |"
        for stage, e in card["environment"].items()
    ]
    lines += ["", "Verify this card: `python -m imgcls lineage models/export`", ""]
    return "\n".join(lines)


def gaps_markdown(card: dict) -> list[str]:
    gaps = card["gaps"]
    lines = [
        "",
        "## Where it falls short",
        "",
        "Lowest recall on the test split:",
        "",
        "| class | recall | correct / test images |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['recall']:.3f} | {r['correct']} / {r['support']} |"
        for name, r in gaps["lowest_recall"].items()
    ]
    lines += [
        "",
        "Most frequent confusions:",
        "",
        "| actual -> predicted | images | of the actual class |",
        "|---|---|---|",
    ]
    lines += [
        f"| {pair} | {p['count']} | {p['count']} / {p['of_actual']} ({p['share_of_actual']:.1%}) |"
        for pair, p in gaps["confused_pairs"].items()
    ] or ["| (none: no test image is misclassified) | | |"]
    if card["saliency"]:
        lines += [
            "",
            "Grad-CAM grids of these confusions (where the model looked; in the MLflow run and as DVC "
            "plots, `dvc plots show`):",
            "",
        ]
        lines += [
            f"- [{grid['file']}]({grid['from_card']}) (MLflow artifact `{grid['mlflow_artifact']}`)"
            for grid in card["saliency"]
        ]
    return lines


def calibration_markdown(calibration: dict) -> list[str]:
    scaled = calibration["fitted_on"] != "none"
    fallback = calibration.get("not_used_because")
    return [
        "",
        "## Calibration",
        "",
        (
            f"Temperature scaling: the T fitted on the val split ({calibration['temperature_fitted']:.4f}) "
            f"is not used, because {fallback}; T = 1 is exported: probabilities are softmax(logits)."
            if fallback
            else f"Temperature scaling, fitted on the val split: T = {calibration['temperature']:.4f}. "
            "The exported model's logits are unchanged; "
            "its probabilities (predict, serving) are softmax(logits / T)."
            if scaled
            else "Temperature scaling is off (`evaluate.temperature_scaling: false`): probabilities "
            "are softmax(logits)."
        ),
        "",
        "| on the test split | uncalibrated | calibrated |",
        "|---|---|---|",
        f"| expected calibration error (15 bins) | {calibration['test_ece_uncalibrated']:.4f} | "
        f"{calibration['test_ece_calibrated']:.4f} |",
        f"| negative log-likelihood | {calibration['test_nll_uncalibrated']:.4f} | "
        f"{calibration['test_nll_calibrated']:.4f} |",
    ]
