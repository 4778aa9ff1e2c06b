"""Refuse a torch.export archive (.pt2) that could run code when torch loads or runs it, before torch reads
it.

`torch.export.load` unpickles, without `weights_only`, any weight or constant its config marks `use_pickle`,
custom and opaque objects, and sample inputs that fail a safe load; it compiles `guards_code` strings into
Python; it evaluates symbolic shapes with sympy (`eval`); and a graph node may name any callable reachable
from `torch` (`torch.os.system`). A file and its model card can both be swapped, so the archive is read here
as plain JSON and zip entries and must hold only what this pipeline's exports hold: tensors stored raw, aten
operators a torchvision classifier uses, and plain shape symbols. Anything else is refused, naming it."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import torch

# Every operator the exports of the architectures in imgcls/model/architectures.py contain
# (tests/export/test_program_safety.py exports each one and checks it passes): adding an architecture may add
# a line here.
OPERATORS = frozenset(
    f"torch.ops.aten.{name}"
    for name in (
        "adaptive_avg_pool2d.default",
        "add.Tensor",
        "conv2d.default",
        "dropout_.default",
        "flatten.using_ints",
        "gelu.default",
        "hardsigmoid.default",
        "hardswish_.default",
        "layer_norm.default",
        "linear.default",
        "max_pool2d.default",
        "mul.Tensor",
        "permute.default",
        "relu.default",
        "relu_.default",
        "sigmoid.default",
        "silu_.default",
    )
)
# The entries of an archive `torch.export.save` writes for one program, below its root folder.
PLAIN_ENTRIES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
ENTRY = re.compile(
    r"(models/\w+\.json|data/weights/\w+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/\w+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/\w+\.pt)"
)
SYMBOL = re.compile(r"Symbol\('s\d+'(?:, (?:positive|integer)=True)*\)")
EXPRESSION = re.compile(r"(?:s\d+|\d+|//|[-+*/() ])*")  # shape arithmetic on symbols and integers only


class UnsafeProgram(RuntimeError):
    """A .pt2 archive holding something that could run code."""


def check_program(path: Path) -> None:
    """Raise UnsafeProgram unless `path` is a .pt2 archive of the form this pipeline exports."""
    try:
        with zipfile.ZipFile(path) as archive:
            _check_archive(path, archive)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError) as error:
        raise UnsafeProgram(
            f"{path} is not a readable torch.export archive ({type(error).__name__}: "
            f"{str(error)[:120]}); it is not loaded"
        ) from None


def _check_archive(path: Path, archive: zipfile.ZipFile) -> None:
    names = archive.namelist()
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1:
        raise UnsafeProgram(f"{path}: a .pt2 archive has one root folder, this one {len(roots)}; not loaded")
    root = roots.pop()
    for name in names:
        entry = name[len(root) + 1 :]
        if entry not in PLAIN_ENTRIES and not ENTRY.fullmatch(entry):
            raise UnsafeProgram(
                f"{path} holds {entry!r}, which this pipeline's exports never hold (compiled code, "
                "pickled objects or extra files); it is not loaded"
            )
    for name in names:
        entry = name[len(root) + 1 :]
        if entry.endswith("_config.json"):
            _check_payloads(path, entry, json.loads(archive.read(name)))
        elif entry.startswith("models/"):
            _check_graph(path, json.loads(archive.read(name)))
        elif entry.startswith("data/sample_inputs/"):
            try:  # torch falls back to an unrestricted load when this one fails
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception as error:  # any failure of the restricted unpickler means: not plain tensors
                raise UnsafeProgram(
                    f"{path}: {entry} is not plain tensors ({type(error).__name__}); not loaded"
                ) from None


def _check_payloads(path: Path, entry: str, config: dict) -> None:
    for key, meta in config["config"].items():
        if meta.get("use_pickle") or not (meta["path_name"].startswith(("weight_", "tensor_"))):
            raise UnsafeProgram(
                f"{path}: {entry} stores {key!r} as a pickle or an object ({meta['path_name']}), "
                "not as raw tensor bytes; unpickling it could run code, so it is not loaded"
            )


def _check_graph(path: Path, program: dict) -> None:
    if program.get("guards_code"):
        raise UnsafeProgram(
            f"{path}: the program carries guard code ({len(program['guards_code'])} line(s)), "
            "which torch would compile and run; not loaded"
        )
    for node in program["graph_module"]["graph"]["nodes"]:
        if node["target"] not in OPERATORS:
            raise UnsafeProgram(
                f"{path}: the graph calls {node['target']!r}, not one of the aten operators this "
                "pipeline's exports use; not loaded"
            )
    for expression in [*program.get("range_constraints", {}), *_expressions(program)]:
        if not EXPRESSION.fullmatch(SYMBOL.sub("s0", expression)):
            raise UnsafeProgram(
                f"{path}: the shape expression {expression[:80]!r} is not plain arithmetic on "
                "shape symbols (torch would evaluate it as Python); not loaded"
            )


def _expressions(value) -> list[str]:
    """Every `expr_str` in the program (symbolic sizes), at any depth."""
    if isinstance(value, dict):
        found = [value["expr_str"]] if isinstance(value.get("expr_str"), str) else []
        return found + [e for v in value.values() for e in _expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in _expressions(v)]
    return []
