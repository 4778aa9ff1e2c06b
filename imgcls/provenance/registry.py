"""The MLflow model registry: the export logged as an MLflow 3 model of its run and registered from it, one
name per dataset, and a local model card held against the version it claims to be."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgcls.config import layout
from imgcls.config.params import Params
from imgcls.export.formats import ONNX_FILE
from imgcls.provenance.store import StoreError, open_store, resolve_uri

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


def register(client, params: Params, out: Path, run_id: str, card: dict, card_sha: str) -> dict:
    """The export logged as an MLflow 3 model of the run (the runs table's Models column and the model page
    show it, with the run's params and test metrics) and a registered version made from it, created in one
    call with the tags that tie it to its card. The same card exported again reuses its version; versions of
    this run left without a card are marked; a name that holds another model's classes is refused."""
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
    example_file = next(p for p in sorted((Path(layout.PREPARED) / "test").rglob("*")) if p.is_file())
    tags = {
        "model_card_sha256": card_sha,
        "git_commit": card["git"]["git_commit"],
        "onnx_sha256": card["model"]["files"][ONNX_FILE],
        "classes_sha256": classes_hash(card),
        "classes": ", ".join(card["model"]["class_names"])[:4000],
    }
    logged = log_served_model(out, run_id, f"model-{card_sha[:12]}", example_file.read_bytes(), tags)
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    return {
        "name": name,
        "version": str(version.version),
        "run_id": run_id,
        "model_id": logged.model_id,
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


def served_model_args(export_dir: Path, scratch: Path, example_image: bytes) -> dict:
    """What MLflow needs to save the export as a pyfunc model: models-from-code
    (imgcls/serving/served_model.py runs it, no pickle) with only the modules serving imports, the export's
    files as its artifact, its signature and an input example."""
    import shutil

    import pandas
    from mlflow.models import infer_signature

    from imgcls.serving.model import ImageClassifier

    example = pandas.DataFrame({"image": [example_image]})
    loaded = ImageClassifier()
    loaded.load(export_dir)
    staged = scratch / "export"  # the artifact's name in the model: not the partial folder's
    shutil.copytree(export_dir, staged)
    return {
        "python_model": str(PACKAGE / "serving" / "served_model.py"),
        "artifacts": {"export_dir": str(staged)},
        "code_paths": [str(serving_code(scratch / "code"))],
        "input_example": example,
        "signature": infer_signature(example, loaded.predict(None, example)),
    }


PACKAGE = Path(__file__).resolve().parents[1]  # imgcls/


def serving_code(target: Path) -> Path:
    """A copy of the package holding only the modules the served model imports, at any depth (not the stages,
    the training code or the commands): target/imgcls, for MLflow's code_paths."""
    wanted, queue = set(), ["imgcls.serving.served_model"]
    while queue:
        name = queue.pop()
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if name in wanted or not path.is_file():
            continue
        wanted.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgcls"):
                queue += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                queue += [alias.name for alias in node.names if alias.name.startswith("imgcls")]
    for name in wanted:
        parts = name.split(".")
        for depth in range(1, len(parts)):  # every package on the way needs its __init__.py
            init = Path(*parts[:depth], "__init__.py")
            (target / init).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PACKAGE.parent / init, target / init)
        shutil.copy(
            PACKAGE.parent / (name.replace(".", "/") + ".py"), target / (name.replace(".", "/") + ".py")
        )
    return target / "imgcls"


def save_served_model(export_dir: Path, target: Path, example_image: bytes) -> None:
    """The export as an MLflow pyfunc model in the folder `target`."""
    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        mlflow.pyfunc.save_model(target, **served_model_args(export_dir, Path(scratch), example_image))


def log_served_model(export_dir: Path, run_id: str, name: str, example_image: bytes, tags: dict):
    """The export as an MLflow 3 logged model of `run_id`: its own entity, linked to the run, carrying the
    run's params and its metrics of step 0 (the test metrics evaluate logged)."""
    import mlflow
    from mlflow.models import Model

    # MLflow files a logged model under the process's current experiment, not its run's: make it the run's
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as scratch:
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            tags=tags,
            **served_model_args(export_dir, Path(scratch), example_image),
        )
