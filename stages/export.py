"""Stage export: a torch.export program checked against the trained model, a model card, and a
registered MLflow model version."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from stages import tracking
from stages.cli import stage_main
from stages.data import eval_transform, make_loader, split_folder
from stages.imagefolder import sha256_file
from stages.model import load_checkpoint, model_from_checkpoint
from stages.model_card import card_markdown, model_card
from stages.outputs import write_json
from stages.params import Params
from stages.runtimes import ONNX_FILE, PROGRAM_FILE, RUNTIMES, compare, export_onnx, export_program, load_runtime

log = logging.getLogger("export")


def run(params: Params) -> dict:
    """Export, prove parity on real test images, register in MLflow, and describe it all in a card."""
    cfg = params.export
    git = check_committed(cfg.allow_dirty, params.output_paths())
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    checkpoint = load_checkpoint(params.train.out, made_by="train")
    model = model_from_checkpoint(checkpoint)
    images = test_images(params, checkpoint)
    export_program(model, images[:2], out / PROGRAM_FILE)
    export_onnx(model, images[:2], out / ONNX_FILE, cfg.onnx_opset)
    parity = check_parity(model, out, images, cfg.atol)
    write_json(out / "labels.json", checkpoint["class_names"])
    write_json(out / "preprocessing.json", checkpoint["preprocessing"])
    registered = register(params, out)
    card = model_card(params, checkpoint, parity, registered, git, out)
    write_json(out / "model_card.json", card)
    (out / "model_card.md").write_text(card_markdown(card), encoding="utf-8")
    log_card(registered, out, parity, card)
    for runtime, figures in parity.items():
        log.info("%s parity on %d test images: max |logit diff| %.2e, top-1 agreement %.4f", runtime,
                 figures["images"], figures["max_abs_diff"], figures["top1_agreement"])
    log.info("registered %s version %s", registered["name"], registered["version"])
    return {"parity": parity, "registered": registered}


def check_committed(allow_dirty: bool, outputs: tuple[str, ...]) -> dict:
    """Refuse (before any work) to register a model made from uncommitted code or data."""
    git = tracking.git_state(outputs)
    if git["git_dirty"] and not allow_dirty:
        raise RuntimeError(f"uncommitted changes in {git['git_dirty_paths'] or 'the repository'}: a registered "
                           "model must trace back to a commit. Commit them and run `dvc repro` again, or set "
                           "export.allow_dirty: true (the card and the run then record git_dirty: true)")
    return git


def test_images(params: Params, checkpoint: dict) -> torch.Tensor:
    """The real test split, preprocessed exactly as at evaluation."""
    dataset = split_folder(params.prepare.out, "test", eval_transform(checkpoint["preprocessing"]))
    loader = make_loader(dataset, params.evaluate.batch_size, False, 0, 0)
    return torch.cat([images for images, _ in loader])


@torch.no_grad()
def check_parity(model, out: Path, images: torch.Tensor, atol: float) -> dict:
    """Each runtime's logits vs the eager model's on the same images; raises beyond `atol` or on any top-1 change."""
    expected = model(images).numpy()
    parity = {runtime: compare(expected, load_runtime(out, runtime)(images.numpy()), atol) for runtime in RUNTIMES}
    broken = {k: v for k, v in parity.items() if v["max_abs_diff"] > atol or v["top1_agreement"] < 1.0}
    if broken:
        raise RuntimeError(f"exported model disagrees with models/model.pt on the test images: {broken}. "
                           "The export is not trustworthy; not registering it")
    return parity


def register(params: Params, out: Path) -> dict:
    """Log the export as an MLflow pyfunc (signature + input example) and register a new version."""
    import mlflow
    import pandas
    from mlflow.models import infer_signature

    from stages.serving import ImageClassifier

    tracking.connect()
    run_id = json.loads(Path(params.train.run).read_text())["run_id"]
    example_file = next((Path(params.prepare.out) / "test").rglob("*.png"))
    example = pandas.DataFrame({"image": [example_file.read_bytes()]})
    with mlflow.start_run(run_id=run_id):
        loaded = ImageClassifier()
        loaded.load(out)
        signature = infer_signature(example, loaded.predict(None, example))
        # Log a fresh instance: MLflow pickles it, and the loaded program is rebuilt in load_context.
        info = mlflow.pyfunc.log_model(name="model", python_model=ImageClassifier(), artifacts={"export_dir": str(out)},
                                       code_paths=[str(Path(__file__).parent)], signature=signature,
                                       input_example=example, registered_model_name=params.export.registered_model)
    return {"name": params.export.registered_model, "version": str(info.registered_model_version),
            "model_uri": info.model_uri, "run_id": run_id}


def log_card(registered: dict, out: Path, parity: dict, card: dict) -> None:
    """Card, parity and the DVC hashes onto the run; the card's hash onto the run and the model version."""
    import mlflow
    card_sha = sha256_file(out / "model_card.json")
    with mlflow.start_run(run_id=registered["run_id"]):
        mlflow.log_metrics({f"export_{runtime}_{k}": v for runtime, figures in parity.items()
                            for k, v in figures.items()})
        mlflow.log_artifact(str(out / "model_card.json"), "export")
        mlflow.log_artifact(str(out / "model_card.md"), "export")
        mlflow.set_tags({f"dvc.{name}_md5": value for name, value in card["dvc"].items()}
                        | {"model_card_sha256": card_sha}
                        | {f"{name}_sha256": sha for name, sha in card["model"]["files"].items() if "/" not in name})
    client = mlflow.MlflowClient()
    client.set_model_version_tag(registered["name"], registered["version"], "model_card_sha256", card_sha)
    client.set_model_version_tag(registered["name"], registered["version"], "git_commit", card["git"]["git_commit"])


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
