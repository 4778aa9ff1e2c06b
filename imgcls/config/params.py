"""Typed, validated view of params.yaml: `load_params(path) -> Params`, loaded once per stage."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imgcls.config import layout
from imgcls.model.architectures import ARCHITECTURES

ARCHS = tuple(ARCHITECTURES)
# Params that change how fast or where a stage runs, not what it computes: a killed train resumes across them,
# and a run is compared with a reference made with other values of them.
DOES_NOT_CHANGE_RESULTS = ("train.checkpoint_every", "runtime.num_workers", "train.distributed.timeout",
                           "train.distributed.master_addr", "train.distributed.master_port", "prepare.workers",
                           "tracking.timeout", "runtime.allow_dirty")


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
        """A separate test folder (`test_data` is not `data`): the test split is that folder, untouched."""
        return Path(self.test_data).resolve() != Path(self.data).resolve()


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
        found = {"prepare.data": self.prepare.data, "prepare.test_data": self.prepare.test_data,
                 "pretrain.data": self.pretrain.data, "pretrain.file": self.pretrain.file}
        return {key: path for key, path in found.items() if path}


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently), and
    reads `1e-4` as a number, as YAML 1.2 and DVC do (PyYAML's YAML 1.1 wants `1.0e-4`)."""


def _unique_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key `{key}` appears twice in one section (lines {seen[key]} and {line}), and only "
                "one would count; keep one", key_node.start_mark)
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml(text: str):
    """YAML text as Python values, strictly (`StrictLoader`)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


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
        fix = "" if "appears twice" in str(problem) else "; fix the syntax (indentation, a missing ':' or an unclosed quote)"
        raise ValueError(f"{path} is not valid YAML{where}: {problem}{fix}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw, str(path))


def parse_params(raw: dict, source: str) -> Params:
    """Validate a params mapping (as read from params.yaml or a model card); `source` names it in errors."""
    params = _build(Params, raw, source, "")
    _check_together(params, source)
    return params


def _overlap(a: str, b: str) -> bool:
    a_path, b_path = Path(a).resolve(), Path(b).resolve()
    return a_path == b_path or a_path.is_relative_to(b_path) or b_path.is_relative_to(a_path)


def _check_inputs(p: Params, source: str) -> None:
    """Refuse an input that is, holds or lies inside a pipeline output (imgcls.config.layout): the stage that owns the
    output deletes and rewrites it."""
    for key, path in p.inputs().items():
        for stage in layout.STAGES:
            for output in layout.outputs(stage):
                if _overlap(path, output):
                    raise ValueError(f"{source}: {key} = {path!r} overlaps {output}, which the {stage} stage deletes "
                                     "and rewrites; keep your own files outside the pipeline's outputs, e.g. in "
                                     "data/<a folder of your own>")


def _check_together(p: Params, source: str) -> None:
    """Rules that tie two keys together, or check a value's form."""
    _check_inputs(p, source)
    if p.prepare.val_fraction == 0:
        raise ValueError(f"{source}: prepare.val_fraction = 0 leaves no val split, which train needs to pick its "
                         "best epoch and evaluate to fit the temperature; use at least 0.1")
    if p.pretrain.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", p.pretrain.sha256):
        raise ValueError(f"{source}: pretrain.sha256 = {p.pretrain.sha256!r} must be the 64 hex digits of the weights "
                         "file's SHA-256 (`sha256sum <file>`), or null")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", p.export.registered_model):
        raise ValueError(f"{source}: export.registered_model = {p.export.registered_model!r}: use letters, digits, "
                         "'.', '_' and '-' (starting with a letter or digit), at most 128 characters")
    smallest = ARCHITECTURES[p.model.arch].min_size
    sizes = {"train.crop_size": p.train.crop_size}
    if p.pretrain.source == "dataset":
        sizes["pretrain.crop_size"] = p.pretrain.crop_size
    for key, size in sizes.items():
        if size < smallest:
            raise ValueError(f"{source}: {key} = {size} is below the smallest input model.arch = {p.model.arch} "
                             f"accepts ({smallest} px: its downsampling layers need it); raise {key} (and "
                             "prepare.image_size) or choose another model.arch")
    if p.runtime.reproducible and p.runtime.threads == 0:
        raise ValueError(f"{source}: runtime.threads = 0 (one per core) cannot be reproduced on another machine; "
                         "set a fixed count (e.g. 2) or runtime.reproducible: false")
    fixed, fraction = p.prepare.fixed_test_set, p.prepare.test_fraction
    if fixed and fraction != 0:
        raise ValueError(f"{source}: prepare.test_data = {p.prepare.test_data!r} is the test split, so "
                         f"prepare.test_fraction = {fraction} must be 0 (or set test_data to prepare.data's folder "
                         "to draw the test split from it)")
    if not fixed and fraction == 0:
        raise ValueError(f"{source}: prepare.test_data is prepare.data's folder, so the test split is drawn from it: "
                         "set prepare.test_fraction above 0 (e.g. 0.2), or point test_data at a separate test set")


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
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{source}: {key} = {value!r} must be a finite number")
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{source}: {key} is empty; give it a value (or null where that is allowed)")
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
