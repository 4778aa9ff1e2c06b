"""Where each stage writes: fixed paths inside the repository, the same strings that dvc.yaml declares as the
stage's outputs (tests/stages/test_dvc_yaml.py holds the two equal, and every stage checks it when it starts).

No param can move them. DVC deletes a stage's outputs before it runs the stage, before any code of ours could
look at a path, so an output path taken from params.yaml (`export.out: ../victim`) was deleted by DVC itself.
Fixed here, what DVC or a stage may delete is confined by construction to folders the project owns."""

from __future__ import annotations

# The one fixed input: an empty folder (a README.md only) for a folder param whose stage reads nothing there,
# prepare.test_data when the test split is drawn from prepare.data, pretrain.data when pretrain.source is not
# `dataset`. DVC hashes every folder a stage names on every `dvc repro`; this one costs nothing.
NOTHING = "data/none"

FINGERPRINTS = "metrics/environment"  # one machine fingerprint per computing stage: <stage>.json

PREPARED = "data/prepared"  # train/ val/ test/ ImageFolder trees, manifest.csv, excluded.csv
MANIFEST = (
    f"{PREPARED}/manifest.csv"  # every prepared image's split, class and SHA-256: what later stages read
)
PREPARE_METRICS = "metrics/prepare.json"
PREPARE_REPORT = "reports/prepare.json"  # counts per split and class, exclusions by kind, dropped classes

PRETRAINED = "models/pretrained.pt"
PRETRAIN_METRICS = "metrics/pretrain.json"

MODEL = "models/model.pt"
CHECKPOINT = "models/checkpoint.pt"  # the whole training state, kept while train runs (persist: true)
RUN = "models/run.json"  # the MLflow run the model belongs to
HISTORY = "plots/train.csv"
TRAIN_METRICS = "metrics/train.json"

EVALUATE_METRICS = "metrics/evaluate.json"  # headline figures only: `dvc exp show` has a column for each
EVALUATE_REPORT = "reports/evaluate.json"  # per class, weakest classes and pairs, calibration detail
CONFUSION = "plots/confusion.csv"
RELIABILITY = "plots/reliability"  # uncalibrated.csv, calibrated.csv and reliability.png
SALIENCY = "plots/saliency"  # one Grad-CAM grid PNG per confused class pair

EXPORT = "models/export"

STAGES = ("prepare", "pretrain", "train", "evaluate", "export")
# The stages whose results depend on the machine: each records its fingerprint(stage).
FINGERPRINTED = ("pretrain", "train", "evaluate")


def fingerprint(stage: str) -> str:
    return f"{FINGERPRINTS}/{stage}.json"


# Every path each stage writes, as dvc.yaml declares it (outs, metrics and plots). DVC caches the first kind
# (git ignores them); the second kind are small results committed to git (`cache: false`): the reference.
CACHED = {
    "prepare": (PREPARED,),
    "pretrain": (PRETRAINED,),
    "train": (MODEL, CHECKPOINT),
    "evaluate": (),
    "export": (EXPORT,),
}
COMMITTED = {
    "prepare": (PREPARE_METRICS, PREPARE_REPORT),
    "pretrain": (fingerprint("pretrain"), PRETRAIN_METRICS),
    "train": (fingerprint("train"), RUN, HISTORY, TRAIN_METRICS),
    "evaluate": (
        fingerprint("evaluate"),
        RELIABILITY,
        EVALUATE_REPORT,
        EVALUATE_METRICS,
        CONFUSION,
        SALIENCY,
    ),
    "export": (),
}


def outputs(stage: str) -> tuple[str, ...]:
    """Every path `stage` may write or delete."""
    return CACHED[stage] + COMMITTED[stage]


def all_outputs() -> tuple[str, ...]:
    return tuple(path for stage in STAGES for path in outputs(stage))
