"""Stage export: ONNX and torch.export programs checked against the trained model, a model card, and, last,
a registered MLflow model version."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch

from imgcls.config import layout
from imgcls.engine.fingerprint import fingerprint
from imgcls.export.card import calibration_record, model_card, write_card
from imgcls.export.formats import CALIBRATION_FILE, ONNX_FILE, PROGRAM_FILE, export_onnx, export_program
from imgcls.export.parity import check_parity, test_images
from imgcls.files import replace_folder, write_json
from imgcls.model.checkpoints import load_checkpoint, model_from_checkpoint
from imgcls.provenance import registry, run_outputs, runs, store, ui_links
from imgcls.provenance.git import git_state
from imgcls.serving.packaging import log_served_model
from stages.entry import StageContext, stage_main

log = logging.getLogger("export")


def run(context: StageContext) -> dict:
    """Export, prove parity on real test images, describe it all in a card, and register it last. The new
    export replaces models/export only when all of that succeeded; a failure leaves the previous one as it
    was."""
    params, cfg = context.params, context.params.export
    git = git_state(layout.all_outputs())  # the entry point refused a dirty tree unless runtime.allow_dirty
    client = store.connect(params.tracking.timeout)
    trained = runs.reopen(client, layout.RUN, "export")
    run_id = trained.info.run_id
    checkpoint = load_checkpoint(layout.MODEL, made_by="train")
    model = model_from_checkpoint(checkpoint)
    images = test_images(cfg.batch_size, checkpoint)
    with replace_folder(layout.EXPORT) as out:
        export_program(model, images[:2], out / PROGRAM_FILE)
        export_onnx(model, images[:2], out / ONNX_FILE, cfg.onnx_opset)
        parity = check_parity(model, out, images, cfg.atol)
        write_json(out / "labels.json", checkpoint["class_names"])
        write_json(out / "preprocessing.json", checkpoint["preprocessing"])
        write_json(out / CALIBRATION_FILE, calibration_record())
        environment = fingerprint(torch.device("cpu"), params.runtime.reproducible)
        git |= {"train_commit": trained.data.tags.get("git_commit", "")}  # where the model was trained
        card = model_card(
            params,
            checkpoint,
            parity,
            {"name": cfg.registered_model, "run_id": run_id},
            git,
            out,
            environment,
        )
        card_sha = write_card(out, card)
        run_outputs.log_card(client, run_id, out, parity, card, card_sha)
        example = next(p for p in sorted(Path(layout.PREPARED, "test").rglob("*")) if p.is_file())
        log_model = partial(log_served_model, out, run_id, f"model-{card_sha[:12]}", example.read_bytes())
        registered = registry.register(client, params, run_id, card, card_sha, log_model)  # last: complete
        # informational: the card is found from the version by hash
        write_json(out / "registry.json", registered)
    for name, figures in parity.items():
        log.info(
            "%s parity on %d test images: max |logit diff| %.2e, top-1 agreement %.4f",
            name,
            figures["images"],
            figures["max_abs_diff"],
            figures["top1_agreement"],
        )
    log.info(
        "%s %s version %s: %s",
        "reused" if registered["reused"] else "registered",
        registered["name"],
        registered["version"],
        ui_links.version_link(store.tracking_uri(), registered["name"], registered["version"]),
    )
    return {"parity": parity, "registered": registered}


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
