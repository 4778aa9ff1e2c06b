"""What params.yaml must satisfy: every key known and present with a value of its type and range (from the
dataclasses' fields), and the rules that tie keys together. Each refusal names the key, the value and the
fix."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.config import layout
from imgcls.model.architectures import ARCHITECTURES

if TYPE_CHECKING:
    from imgcls.config.params import Params


def _overlap(a: str, b: str) -> bool:
    a_path, b_path = Path(a).resolve(), Path(b).resolve()
    return a_path == b_path or a_path.is_relative_to(b_path) or b_path.is_relative_to(a_path)


def _check_inputs(p: Params, source: str) -> None:
    """Refuse an input that is, holds or lies inside a pipeline output (imgcls.config.layout): the stage that
    owns the output deletes and rewrites it."""
    for key, path in p.inputs().items():
        for stage in layout.STAGES:
            for output in layout.outputs(stage):
                if _overlap(path, output):
                    raise ValueError(
                        f"{source}: {key} = {path!r} overlaps {output}, which the {stage} stage deletes "
                        "and rewrites; keep your own files outside the pipeline's outputs, e.g. in "
                        "data/<a folder of your own>"
                    )


def check_together(p: Params, source: str) -> None:
    """Rules that tie two keys together, or check a value's form."""
    _check_inputs(p, source)
    if p.prepare.val_fraction == 0:
        raise ValueError(
            f"{source}: prepare.val_fraction = 0 leaves no val split, which train needs to pick its "
            "best epoch and evaluate to fit the temperature; use at least 0.1"
        )
    if p.pretrain.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", p.pretrain.sha256):
        raise ValueError(
            f"{source}: pretrain.sha256 = {p.pretrain.sha256!r} must be the 64 hex digits of the weights "
            "file's SHA-256 (`sha256sum <file>`), or null"
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", p.export.registered_model):
        raise ValueError(
            f"{source}: export.registered_model = {p.export.registered_model!r}: use letters, digits, "
            "'.', '_' and '-' (starting with a letter or digit), at most 128 characters"
        )
    smallest = ARCHITECTURES[p.model.arch].min_size
    sizes = {"train.crop_size": p.train.crop_size}
    if p.pretrain.source == "dataset":
        sizes["pretrain.crop_size"] = p.pretrain.crop_size
    for key, size in sizes.items():
        if size < smallest:
            raise ValueError(
                f"{source}: {key} = {size} is below the smallest input model.arch = {p.model.arch} "
                f"accepts ({smallest} px: its downsampling layers need it); raise {key} (and "
                "prepare.image_size) or choose another model.arch"
            )
    if p.runtime.reproducible and p.runtime.threads == 0:
        raise ValueError(
            f"{source}: runtime.threads = 0 (one per core) cannot be reproduced on another machine; "
            "set a fixed count (e.g. 2) or runtime.reproducible: false"
        )
    fixed, fraction = p.prepare.fixed_test_set, p.prepare.test_fraction
    if fixed and fraction != 0:
        raise ValueError(
            f"{source}: prepare.test_data = {p.prepare.test_data!r} is the test split, so "
            f"prepare.test_fraction = {fraction} must be 0 (or set test_data to prepare.data's folder "
            "to draw the test split from it)"
        )
    if not fixed and fraction == 0:
        raise ValueError(
            f"{source}: prepare.test_data = {p.prepare.test_data!r} is no separate test set, so the test "
            "split is drawn from prepare.data: set prepare.test_fraction above 0 (e.g. 0.2), or point "
            "test_data at a separate test set"
        )
    _check_nothing(p, source)


def _check_nothing(p: Params, source: str) -> None:
    """data/none stands for "nothing to read": refuse it where a stage would read it, and refuse it holding
    anything, which no stage would ever look at."""
    nothing = Path(layout.NOTHING).resolve()
    reads = {"prepare.data": "prepare reads its images from prepare.data"}
    if p.pretrain.source == "dataset":
        reads["pretrain.data"] = "pretrain.source = dataset pretrains on pretrain.data"
    for key, why in reads.items():
        if Path(getattr(p, key.split(".")[0]).data).resolve() == nothing:
            raise ValueError(
                f"{source}: {why}, which is {layout.NOTHING} (nothing to read); point {key} at an "
                "ImageFolder of your own"
                + (", or choose another pretrain.source" if key == "pretrain.data" else "")
            )
    named = {key: path for key, path in p.inputs().items() if Path(path).resolve() == nothing}
    if not named:
        return
    if not nothing.is_dir():
        raise ValueError(
            f"{source}: {', '.join(named)} = {layout.NOTHING}, which is missing; restore it (`git checkout "
            f"-- {layout.NOTHING}`): DVC needs every folder a stage names to exist"
        )
    extra = sorted(str(f.relative_to(nothing)) for f in nothing.rglob("*") if f.name != "README.md")
    if extra:
        raise ValueError(
            f"{source}: {', '.join(named)} = {layout.NOTHING}, which must stay empty (no stage reads it), "
            f"but holds {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}; move those files to a "
            "folder of your own and name that folder instead"
        )


def build(cls, raw, source: str, prefix: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: `{prefix.rstrip('.') or 'top level'}` must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"allowed in `{prefix.rstrip('.') or 'top level'}`: {', '.join(fields)}"
        )
    missing = [prefix + name for name in fields if name not in raw]
    if missing:
        raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key, kind, value = prefix + name, hints[name], raw[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build(kind, value, source, key + ".")
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
        raise ValueError(
            f"{source}: {key} = {value!r} is not allowed; choose one of {', '.join(meta['choices'])}"
        )
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
