"""Typed, validated view of params.yaml: `load_params(path) -> Params`, loaded once per stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imgcls.config import layout
from imgcls.config.checks import build, check_together
from imgcls.config.strict_yaml import read_yaml
from imgcls.model.architectures import ARCHITECTURES

ARCHS = tuple(ARCHITECTURES)
# Params that change how fast or where a stage runs, not what it computes: a killed train resumes across them,
# and a run is compared with a reference made with other values of them.
DOES_NOT_CHANGE_RESULTS = (
    "train.checkpoint_every",
    "runtime.num_workers",
    "train.distributed.timeout",
    "train.distributed.max_restarts",
    "train.distributed.master_addr",
    "train.distributed.master_port",
    "prepare.workers",
    "tracking.timeout",
    "runtime.allow_dirty",
)


def choice(*allowed: str):
    return field(metadata={"choices": allowed})


def number(low: float | None = None, high: float | None = None):
    return field(metadata={"range": (low, high)})


@dataclass(frozen=True)
class ModelParams:
    arch: str = choice(*ARCHS)


@dataclass(frozen=True)
class RuntimeParams:
    """How every stage runs: the one section every stage may read."""

    device: str = choice("auto", "cpu", "cuda")
    reproducible: bool
    threads: int = number(0, 1024)
    channels_last: bool
    num_workers: int = number(-1, 64)
    allow_dirty: bool


@dataclass(frozen=True)
class TrackingParams:
    timeout: float = number(1.0, 3600.0)


@dataclass(frozen=True)
class PrepareParams:
    data: str
    test_data: str
    image_size: int = number(8, 4096)
    val_fraction: float = number(0.0, 0.5)  # above 0: train validates and evaluate calibrates on it
    test_fraction: float = number(0.0, 0.5)
    seed: int = number(0, None)

    min_size: int = number(1, None)
    min_per_class: int = number(3, None)
    small_classes: str = choice("fail", "drop")
    on_bad_file: str = choice("skip", "fail")
    on_conflict: str = choice("drop", "fail")
    follow_symlinks: bool
    workers: int = number(0, 256)
    format: str = choice("jpeg", "png")
    jpeg_quality: int = number(50, 100)

    @property
    def fixed_test_set(self) -> bool:
        """A separate test folder (`test_data` is neither `data` nor data/none): the test split is that
        folder, untouched."""
        test = Path(self.test_data).resolve()
        return test not in (Path(self.data).resolve(), Path(layout.NOTHING).resolve())


@dataclass(frozen=True)
class PretrainParams:
    source: str = choice("imagenet", "file", "dataset", "none")
    file: str | None
    sha256: str | None
    download: bool
    data: str
    crop_size: int = number(8, 4096)
    crop_scale_min: float = number(0.01, 1.0)
    epochs: int = number(1, None)
    batch_size: int = number(1, None)
    lr: float = number(0.0, 10.0)
    weight_decay: float = number(0.0, None)
    seed: int = number(0, None)


@dataclass(frozen=True)
class DistributedParams:
    nnodes: int = number(1, 4096)
    nproc_per_node: int = number(1, 1024)
    master_addr: str
    master_port: int = number(1, 65535)
    backend: str = choice("auto", "gloo", "nccl")
    timeout: float = number(10.0, 86400.0)
    max_restarts: int = number(0, 100)

    @property
    def processes(self) -> int:
        return self.nnodes * self.nproc_per_node


@dataclass(frozen=True)
class TrainParams:
    checkpoint_every: int = number(0, None)
    experiment: str
    freeze: str = choice("none", "backbone")
    cache_features: bool
    cache_images: bool
    compile: bool
    optimizer: str = choice("adamw", "sgd")
    lr: float = number(0.0, 10.0)
    weight_decay: float = number(0.0, None)
    momentum: float = number(0.0, 1.0)
    warmup_epochs: int = number(0, None)
    label_smoothing: float = number(0.0, 1.0)
    epochs: int = number(1, None)
    batch_size: int = number(1, None)
    crop_size: int = number(8, 4096)
    crop_scale_min: float = number(0.01, 1.0)
    hflip: bool
    monitor: str = choice("val_accuracy", "val_loss")
    patience: int = number(1, None)
    seed: int = number(0, None)
    distributed: DistributedParams


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = number(1, None)
    bootstrap: int = number(100, 100_000)
    seed: int = number(0, None)
    gaps: int = number(1, None)
    temperature_scaling: bool
    saliency_pairs: int = number(0, 100)
    saliency_wrong: int = number(1, 32)
    saliency_right: int = number(0, 32)


@dataclass(frozen=True)
class ExportParams:
    registered_model: str
    batch_size: int = number(1, None)
    atol: float = number(0.0, 1.0)
    onnx_opset: int = number(17, 23)


@dataclass(frozen=True)
class Params:
    model: ModelParams
    runtime: RuntimeParams
    tracking: TrackingParams
    prepare: PrepareParams
    pretrain: PretrainParams
    train: TrainParams
    evaluate: EvaluateParams
    export: ExportParams

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def inputs(self) -> dict[str, str]:
        """{param key: path} of the user's data and weights, which no stage may write."""
        found = {
            "prepare.data": self.prepare.data,
            "prepare.test_data": self.prepare.test_data,
            "pretrain.data": self.pretrain.data,
            "pretrain.file": self.pretrain.file,
        }
        return {key: path for key, path in found.items() if path}


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read params.yaml (plus optional {section: {key: value}} overrides) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from the repository root, where params.yaml lives")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or error
        fix = (
            ""
            if "appears twice" in str(problem)
            else "; fix the syntax (indentation, a missing ':' or an unclosed quote)"
        )
        raise ValueError(f"{path} is not valid YAML{where}: {problem}{fix}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw, str(path))


def parse_params(raw: dict, source: str) -> Params:
    """Validate a params mapping (as read from params.yaml or a model card); `source` names it in errors."""
    params = build(Params, raw, source, "")
    check_together(params, source)
    return params


def flatten(data: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1}: the same key as in params.yaml."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def params_hash(params: dict) -> str:
    """The identity of a set of params (a run, a card and a seed sweep each record it)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
