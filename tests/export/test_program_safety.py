"""A .pt2 archive is read as plain zip entries and JSON before torch loads it: every architecture's export
passes, and each way a crafted archive could run code is refused, with the code never run (a marker file stays
absent)."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from imgcls.export.formats import export_program, load_runtime
from imgcls.export.program_safety import UnsafeProgram, check_program
from imgcls.model.architectures import ARCHITECTURES
from imgcls.model.networks import build_model


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.pt2"
    export_program(build_model("resnet18", 3).eval(), torch.randn(2, 3, 32, 32), path)
    return path


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_exports_a_program_that_passes(arch, tmp_path):
    path = tmp_path / "model.pt2"
    export_program(build_model(arch, 3).eval(), torch.randn(2, 3, 32, 32), path)
    check_program(path)


class Payload:
    """Unpickling it creates `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of the archive with `change({entry: bytes})` applied to its entries."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    change(entries)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def entry(entries: dict, suffix: str) -> str:
    return next(name for name in entries if name.endswith(suffix))


def pickled_weight(marker):
    def change(entries):
        config_name = entry(entries, "_weights_config.json")
        config = json.loads(entries[config_name])
        key = next(iter(config["config"]))
        config["config"][key]["use_pickle"] = True
        entries[config_name] = json.dumps(config).encode()
        path_name = config["config"][key]["path_name"]
        entries[entry(entries, f"data/weights/{path_name}")] = pickle.dumps(Payload(marker))

    return change


def graph_change(edit):
    def change(entries):
        name = entry(entries, "models/model.json")
        program = json.loads(entries[name])
        edit(program)
        entries[name] = json.dumps(program).encode()

    return change


def set_target(program):
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def add_guard(program):
    program["guards_code"] = ["__import__('os').system('true')"]


def add_range(program):
    program["range_constraints"]["__import__('os').system('true')"] = {"min_val": 0, "max_val": None}


def pickled_inputs(marker):
    def change(entries):
        entries[entry(entries, "data/sample_inputs/model.pt")] = pickle.dumps(Payload(marker))

    return change


def extra_library(entries):
    root = next(iter(entries)).split("/")[0]
    entries[f"{root}/data/aotinductor/model/model.so"] = b"\x7fELF"


@pytest.mark.parametrize(
    "make, message",
    [
        (pickled_weight, r"stores 'conv1\.weight' as a pickle or an object"),
        (pickled_inputs, r"data/sample_inputs/model\.pt is not plain tensors"),
        (
            lambda marker: graph_change(set_target),
            r"the graph calls 'torch\.os\.system', not one of the aten operators",
        ),
        (lambda marker: graph_change(add_guard), r"carries guard code \(1 line\(s\)\)"),
        (
            lambda marker: graph_change(add_range),
            r"the shape expression .*__import__.* is not plain arithmetic",
        ),
        (
            lambda marker: extra_library,
            r"holds 'data/aotinductor/model/model\.so', which this pipeline's exports never",
        ),
    ],
)
def test_crafted_archives_are_refused_before_torch_reads_them(program, tmp_path, make, message):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "export"
    folder.mkdir()
    crafted = rewrite(program, folder / "model.pt2", make(marker))
    with pytest.raises(UnsafeProgram, match=message):
        check_program(crafted)
    with pytest.raises(UnsafeProgram):
        load_runtime(folder, "torch")  # the runtime checks before torch.export.load
    assert not marker.exists()


def test_the_payload_would_run_without_the_check(program, tmp_path):
    """The crafted archive is a real attack: torch's own loader runs the pickle."""
    marker = tmp_path / "code-ran"
    crafted = rewrite(program, tmp_path / "model.pt2", pickled_weight(marker))
    try:
        torch.export.load(crafted)
    except Exception:  # noqa: BLE001 - the payload returns a file object, not a tensor: torch fails after it ran
        pass
    assert marker.exists()


def test_not_an_archive_is_one_line(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(io.BytesIO(b"not a zip").getvalue())
    with pytest.raises(UnsafeProgram, match=r"is not a readable torch\.export archive \(BadZipFile"):
        check_program(path)
