"""Stage export: ONNX and torch.export programs checked against the trained model, a model card, and, last,
a registered MLflow model version."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from stages import layout, mlflow_ui, runtime, tracking
from stages.cli import stage_main
from stages.data import eval_crop, make_loader, split_folder, to_model_input
from stages.exported import (
    CALIBRATION_FILE,
    CARD_FILE,
    ONNX_FILE,
    PROGRAM_FILE,
    RUNTIMES,
    compare,
    export_onnx,
    export_program,
    load_runtime,
)
from stages.imagefolder import sha256_file
from stages.model import load_checkpoint, model_from_checkpoint
from stages.model_card import card_markdown, model_card
from stages.outputs import replace_folder, write_json, write_text
from stages.params import Params
from stages.repository import check_committed

log = logging.getLogger("export")


def run(params: Params) -> dict:
    """Export, prove parity on real test images, describe it all in a card, and register it last. The new export
    replaces models/export only when all of that succeeded; a failure leaves the previous one as it was."""
    cfg = params.export
    git = check_committed(cfg.allow_dirty, layout.all_outputs())  # before any work
    client = tracking.connect(params.tracking.timeout)
    run = tracking.reopen(client, layout.RUN, "export")
    run_id = run.info.run_id
    checkpoint = load_checkpoint(layout.MODEL, made_by="train")
    model = model_from_checkpoint(checkpoint)
    images = test_images(params, checkpoint)
    with replace_folder(layout.EXPORT) as out:
        export_program(model, images[:2], out / PROGRAM_FILE)
        export_onnx(model, images[:2], out / ONNX_FILE, cfg.onnx_opset)
        parity = check_parity(model, out, images, cfg.atol)
        write_json(out / "labels.json", checkpoint["class_names"])
        write_json(out / "preprocessing.json", checkpoint["preprocessing"])
        write_json(out / CALIBRATION_FILE, calibration())
        environment = runtime.fingerprint(torch.device("cpu"), params.runtime.reproducible)
        git |= {"train_commit": run.data.tags.get("git_commit", "")}  # where the model was trained
        card = model_card(params, checkpoint, parity, {"name": cfg.registered_model, "run_id": run_id}, git, out,
                          environment)
        write_json(out / CARD_FILE, card)
        write_text(out / "model_card.md", card_markdown(card))
        card_sha = sha256_file(out / CARD_FILE)
        log_card(client, run_id, out, parity, card, card_sha)
        registered = register(client, params, out, run_id, card, card_sha)  # last: a version is always complete
        write_json(out / "registry.json", registered)  # informational: the card is found from the version by hash
    for name, figures in parity.items():
        log.info("%s parity on %d test images: max |logit diff| %.2e, top-1 agreement %.4f", name,
                 figures["images"], figures["max_abs_diff"], figures["top1_agreement"])
    log.info("%s %s version %s: %s", "reused" if registered["reused"] else "registered", registered["name"],
             registered["version"], mlflow_ui.version_link(tracking.tracking_uri(), registered["name"],
                                                           registered["version"]))
    return {"parity": parity, "registered": registered}


def calibration() -> dict:
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


def test_images(params: Params, checkpoint: dict) -> torch.Tensor:
    """The real test split, preprocessed exactly as at evaluation."""
    dataset = split_folder(layout.PREPARED, "test", eval_crop(checkpoint["preprocessing"]))
    loader = make_loader(dataset, params.evaluate.batch_size, False, 0, 0)
    return torch.cat([to_model_input(images, torch.device("cpu")) for images, _ in loader])


@torch.no_grad()
def check_parity(model, out: Path, images: torch.Tensor, atol: float) -> dict:
    """Each runtime's logits vs the eager model's on the same images; raises beyond `atol`, on any top-1
    change, or on any value that is not finite (NaN never passes a tolerance)."""
    expected = model(images).numpy()
    if not np.isfinite(expected).all():
        raise RuntimeError("models/model.pt gives non-finite logits on the test images: the model is broken "
                           "(did training diverge?); not exporting it")
    parity = {name: compare(expected, load_runtime(out, name)(images.numpy()), atol) for name in RUNTIMES}
    broken = {k: v for k, v in parity.items()
              if not np.isfinite(v["max_abs_diff"]) or v["max_abs_diff"] > atol or v["top1_agreement"] < 1.0}
    if broken:
        raise RuntimeError(f"exported model disagrees with models/model.pt on the test images: {broken}. "
                           "The export is not trustworthy; not registering it")
    return parity


def log_card(client, run_id: str, out: Path, parity: dict, card: dict, card_sha: str) -> None:
    """Card, parity and the DVC hashes onto the run, without changing its status."""
    tracking.log_epoch_metrics(client, run_id, 0, {f"export_{name}_{k}": v for name, figures in parity.items()
                                                   for k, v in figures.items()})
    client.log_artifact(run_id, str(out / CARD_FILE), "export")
    client.log_artifact(run_id, str(out / "model_card.md"), "export")
    tags = ({f"dvc.{name}_md5": value for name, value in card["dvc"].items()} | {"model_card_sha256": card_sha}
            | {f"{name}_sha256": sha for name, sha in card["model"]["files"].items() if "/" not in name})
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def register(client, params: Params, out: Path, run_id: str, card: dict, card_sha: str) -> dict:
    """The export logged as an MLflow 3 model of the run (the runs table's Models column and the model page show
    it, with the run's params and test metrics) and a registered version made from it, created in one call
    with the tags that tie it to its card. The same card exported again reuses its version; versions of this
    run left without a card are marked; a name that holds another model's classes is refused."""
    import mlflow

    name = params.export.registered_model
    check_same_classes(client, name, card["model"]["class_names"])
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    for version in versions:
        if version.tags.get("model_card_sha256") == card_sha:
            return {"name": name, "version": str(version.version), "run_id": run_id, "reused": True}
    for version in versions:
        if "model_card_sha256" not in version.tags and "incomplete" not in version.tags:
            client.set_model_version_tag(name, version.version, "incomplete",
                                         "export did not finish: no model card; do not use")
            log.warning("%s version %s has no model card (an interrupted export): tagged incomplete", name,
                        version.version)
    example_file = next(p for p in sorted((Path(layout.PREPARED) / "test").rglob("*")) if p.is_file())
    tags = {"model_card_sha256": card_sha, "git_commit": card["git"]["git_commit"],
            "onnx_sha256": card["model"]["files"][ONNX_FILE], "classes_sha256": classes_hash(card),
            "classes": ", ".join(card["model"]["class_names"])[:4000]}
    logged = log_served_model(out, run_id, f"model-{card_sha[:12]}", example_file.read_bytes(), tags)
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    return {"name": name, "version": str(version.version), "run_id": run_id, "model_id": logged.model_id,
            "reused": False}


def classes_hash(card: dict) -> str:
    return hashlib.sha256(json.dumps(card["model"]["class_names"]).encode()).hexdigest()


def check_same_classes(client, name: str, class_names: list[str]) -> None:
    """Refuse to file a model under a registered name whose versions predict other classes: two datasets must
    not share one name (versions 1-3 a 3-class model, 4-5 a 10-class one)."""
    wanted = hashlib.sha256(json.dumps(class_names).encode()).hexdigest()
    for version in client.search_model_versions(f"name='{name}'", max_results=50, order_by=["version_number DESC"]):
        found = version.tags.get("classes_sha256")
        if found and found != wanted:
            raise ValueError(f"export.registered_model = {name!r} holds versions of another model (version "
                             f"{version.version}: {version.tags.get('classes', 'other classes')}), not one of "
                             f"{', '.join(class_names)}: give each dataset its own name. Set "
                             "export.registered_model (and train.experiment) in params.yaml, e.g. to your data "
                             "folder's name")


def served_model_args(export_dir: Path, scratch: Path, example_image: bytes) -> dict:
    """What MLflow needs to save the export as a pyfunc model: models-from-code (stages/served_model.py runs it,
    no pickle), the export's files as its artifact, its signature and an input example."""
    import shutil

    import pandas
    from mlflow.models import infer_signature

    from stages.serving import ImageClassifier
    example = pandas.DataFrame({"image": [example_image]})
    loaded = ImageClassifier()
    loaded.load(export_dir)
    staged = scratch / "export"  # the artifact's name in the model: not the partial folder's
    shutil.copytree(export_dir, staged)
    return {"python_model": str(Path(__file__).with_name("served_model.py")), "artifacts": {"export_dir": str(staged)},
            "code_paths": [str(Path(__file__).parent)], "input_example": example,
            "signature": infer_signature(example, loaded.predict(None, example))}


def save_served_model(export_dir: Path, target: Path, example_image: bytes) -> None:
    """The export as an MLflow pyfunc model in the folder `target`."""
    import mlflow
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.pyfunc.save_model(target, **served_model_args(export_dir, Path(scratch), example_image))


def log_served_model(export_dir: Path, run_id: str, name: str, example_image: bytes, tags: dict):
    """The export as an MLflow 3 logged model of `run_id`: its own entity, linked to the run, carrying the run's
    params and its metrics of step 0 (the test metrics evaluate logged)."""
    import mlflow
    from mlflow.models import Model
    # MLflow files a logged model under the process's current experiment, not its run's: make it the run's
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as scratch:
        return Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, tags=tags,
                         **served_model_args(export_dir, Path(scratch), example_image))


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
