"""Typed, validated view of params.yaml: `load_params(path) -> Params`, loaded once per stage."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def choice(*allowed: str):
    return field(metadata={"choices": allowed})


def number(low: float | None = None, high: float | None = None):
    return field(metadata={"range": (low, high)})


@dataclass(frozen=True)
class ModelParams:
    arch: str = choice(*ARCHS)


@dataclass(frozen=True)
class PrepareParams:
    data: str
    out: str
    metrics: str
    image_size: int = number(8, 4096)
    val_fraction: float = number(0.0, 0.5)
    test_fraction: float = number(0.0, 0.5)
    seed: int
    min_size: int = number(1, None)
    min_per_class: int = number(3, None)
    small_classes: str = choice("fail", "drop")
    on_bad_file: str = choice("skip", "fail")
    on_conflict: str = choice("drop", "fail")
    follow_symlinks: bool
    workers: int = number(0, 256)


@dataclass(frozen=True)
class PretrainParams:
    source: str = choice("imagenet", "file", "dataset", "none")
    file: str | None
    download: bool
    data: str
    out: str
    metrics: str
    image_size: int = number(8, 4096)
    epochs: int = number(1, None)
    batch_size: int = number(1, None)
    lr: float = number(0.0, 10.0)
    weight_decay: float = number(0.0, None)
    seed: int


@dataclass(frozen=True)
class TrainParams:
    out: str
    run: str
    plots: str
    metrics: str
    experiment: str
    device: str = choice("auto", "cpu", "cuda")
    freeze: str = choice("none", "backbone")
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
    num_workers: int = number(0, 64)
    seed: int
    deterministic: bool


@dataclass(frozen=True)
class EvaluateParams:
    metrics: str
    plots: str
    batch_size: int = number(1, None)


@dataclass(frozen=True)
class ExportParams:
    out: str
    registered_model: str
    atol: float = number(0.0, 1.0)
    onnx_opset: int = number(17, 23)
    allow_dirty: bool


@dataclass(frozen=True)
class Params:
    model: ModelParams
    prepare: PrepareParams
    pretrain: PretrainParams
    train: TrainParams
    evaluate: EvaluateParams
    export: ExportParams

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def output_paths(self) -> tuple[str, ...]:
        """Every path a stage writes (DVC outs, metrics, plots)."""
        p = self
        return (p.prepare.out, p.prepare.metrics, p.pretrain.out, p.pretrain.metrics, p.train.out, p.train.run,
                p.train.plots, p.train.metrics, p.evaluate.metrics, p.evaluate.plots, p.export.out)


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read params.yaml (plus optional {section: {key: value}} overrides) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from the repository root, where params.yaml lives")
    raw = yaml.safe_load(path.read_text()) or {}
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw, str(path))


def parse_params(raw: dict, source: str) -> Params:
    """Validate a params mapping (as read from params.yaml or a model card); `source` names it in errors."""
    return _build(Params, raw, source, "")


def _build(cls, raw, source: str, prefix: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: `{prefix.rstrip('.') or 'top level'}` must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"allowed in `{prefix.rstrip('.') or 'top level'}`: {', '.join(fields)}")
    missing = [prefix + name for name in fields if name not in raw]
    if missing:
        raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key, kind, value = prefix + name, hints[name], raw[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, source, key + ".")
        else:
            values[name] = _check(key, kind, value, f.metadata, source)
    return cls(**values)


def _check(key: str, kind, value, meta, source: str):
    allowed = _allowed_types(kind)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # YAML reads `1` as int; a float param accepts it
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise ValueError(f"{source}: {key} = {value!r} must be {names}")
    if "choices" in meta and value not in meta["choices"]:
        raise ValueError(f"{source}: {key} = {value!r} is not allowed; choose one of {', '.join(meta['choices'])}")
    if "range" in meta:
        low, high = meta["range"]
        if (low is not None and value < low) or (high is not None and value > high):
            upper = "∞" if high is None else high
            raise ValueError(f"{source}: {key} = {value!r} is out of range [{low}, {upper}]")
    return value


def _allowed_types(kind) -> tuple:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return tuple(typing.get_args(kind))
    return (kind,)
