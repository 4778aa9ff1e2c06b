"""The MLflow model registry: a version registered from the export's logged model (imgcls.serving.packaging),
tagged with its card's hash and classes, one name per dataset, and a local model card held against the
version it claims to be."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.config.params import Params
from imgcls.export.formats import ONNX_FILE
from imgcls.provenance.store import StoreError, open_store, resolve_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("registry")


def card_versions(client: MlflowClient, card: dict, card_sha: str) -> tuple[list, list]:
    """(complete versions of the card's registered model made from its run that carry this card's hash, all
    versions made from that run)."""
    info = card["mlflow"]
    versions = client.search_model_versions(f"name='{info['name']}' and run_id='{info['run_id']}'")
    matching = [
        v for v in versions if v.tags.get("model_card_sha256") == card_sha and "incomplete" not in v.tags
    ]
    return matching, versions


def check_registered(card: dict, card_sha: str, where: Path) -> str:
    """Hold a local model card against the registry it names, when that registry can be reached: raise
    RuntimeError when the registry holds versions of the card's run but none with this card's hash (the card
    or the files it vouches for were changed after registration). Returns what was checked, in words."""
    from mlflow.exceptions import MlflowException

    uri = os.environ.get("MLFLOW_TRACKING_URI") or resolve_uri(card["mlflow"]["tracking_uri"], Path.cwd())
    try:
        client = open_store(uri, timeout_s=5)
        matching, versions = card_versions(client, card, card_sha)
    except (StoreError, MlflowException) as error:
        return f"registry not reachable ({str(error)[:160]}): only the local card vouches for {where}"
    if not versions:
        return (
            f"registry {uri} holds no version of run {card['mlflow']['run_id']}: only the local card vouches"
        )
    if not matching:
        raise RuntimeError(
            f"{where}/model_card.json is not the card registered for {card['mlflow']['name']} (run "
            f"{card['mlflow']['run_id']}, versions {', '.join(str(v.version) for v in versions)}): "
            "the export was changed after it was registered, so it is not loaded. Re-export "
            "(`dvc repro export`) or use the registered model (models:/NAME/VERSION)"
        )
    return f"card registered as {card['mlflow']['name']} version {matching[0].version}"


def register(
    client, params: Params, run_id: str, card: dict, card_sha: str, log_model: Callable[[dict], str]
) -> dict:
    """A registered version of the export, created in one call with the tags that tie it to its card, from the
    MLflow model `log_model(tags)` logs and names (its id; imgcls.serving.packaging logs it as a model of the
    run). The same card exported again reuses its version; versions of this run left without a card are
    marked; a name that holds another model's classes is refused."""
    import mlflow

    name = params.export.registered_model
    check_same_classes(client, name, card["model"]["class_names"])
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    for version in versions:
        if version.tags.get("model_card_sha256") == card_sha:
            return {"name": name, "version": str(version.version), "run_id": run_id, "reused": True}
    for version in versions:
        if "model_card_sha256" not in version.tags and "incomplete" not in version.tags:
            client.set_model_version_tag(
                name, version.version, "incomplete", "export did not finish: no model card; do not use"
            )
            log.warning(
                "%s version %s has no model card (an interrupted export): tagged incomplete",
                name,
                version.version,
            )
    tags = {
        "model_card_sha256": card_sha,
        "git_commit": card["git"]["git_commit"],
        "onnx_sha256": card["model"]["files"][ONNX_FILE],
        "classes_sha256": classes_hash(card),
        "classes": ", ".join(card["model"]["class_names"])[:4000],
    }
    model_id = log_model(tags)
    version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
    return {
        "name": name,
        "version": str(version.version),
        "run_id": run_id,
        "model_id": model_id,
        "reused": False,
    }


def classes_hash(card: dict) -> str:
    return hashlib.sha256(json.dumps(card["model"]["class_names"]).encode()).hexdigest()


def check_same_classes(client, name: str, class_names: list[str]) -> None:
    """Refuse to file a model under a registered name whose versions predict other classes: two datasets must
    not share one name (versions 1-3 a 3-class model, 4-5 a 10-class one)."""
    wanted = hashlib.sha256(json.dumps(class_names).encode()).hexdigest()
    for version in client.search_model_versions(
        f"name='{name}'", max_results=50, order_by=["version_number DESC"]
    ):
        found = version.tags.get("classes_sha256")
        if found and found != wanted:
            raise ValueError(
                f"export.registered_model = {name!r} holds versions of another model (version "
                f"{version.version}: {version.tags.get('classes', 'other classes')}), not one of "
                f"{', '.join(class_names)}: give each dataset its own name. Set "
                "export.registered_model (and train.experiment) in params.yaml, e.g. to your data "
                "folder's name"
            )
