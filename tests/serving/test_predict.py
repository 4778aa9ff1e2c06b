"""The predict command in careless and hostile hands: it never overwrites what it should not, never hangs on
what is not a file, writes every file's row whatever its name, and never runs code from a swapped export."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import attempt, digest

pytestmark = pytest.mark.pipeline  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)


def predict(repo, env, *args, timeout: float = 180):
    return attempt([sys.executable, "-m", "imgcls", "predict", *map(str, args)], repo, env, timeout=timeout)


def rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_out_never_overwrites_code_exports_or_other_files_without_force(trained_repo, tmp_path):
    repo, env = trained_repo
    image = sorted((repo / "data/prepared/test").rglob("*.jpg"))[0]
    for target, reason in [
        ("stages/train.py", "git tracks it"),
        ("models/export/model.onnx", "it lies in the export folder"),
        (str(image), "it is one of the images to classify"),
    ]:
        before = digest(repo / target)
        result = predict(repo, env, "models/export", image, "--out", target)
        assert result.returncode == 1 and reason in result.stderr, (target, result.stderr)
        assert "--force" in result.stderr and "Traceback" not in result.stderr
        assert digest(repo / target) == before, target
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    refused = predict(repo, env, "models/export", image, "--out", notes)
    assert refused.returncode == 1 and "it exists and is not a predictions file" in refused.stderr
    assert notes.read_text() == "my notes"
    forced = predict(repo, env, "models/export", image, "--out", notes, "--force")
    assert forced.returncode == 0 and str(image) in rows(notes)
    # an earlier predictions file: no --force
    again = predict(repo, env, "models/export", image, "--out", notes)
    assert again.returncode == 0, again.stderr


def test_every_file_gets_a_row_and_nothing_hangs(trained_repo, tmp_path):
    repo, env = trained_repo
    image = sorted((repo / "data/prepared/test").rglob("*.jpg"))[0]
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(image, folder / "ok.jpg")
    shutil.copy(image, os.fsdecode(bytes(folder) + b"/caf\xe9-latin1.jpg"))  # a name that is not UTF-8
    shutil.copy(image, folder / "=HYPERLINK(1).jpg")  # a spreadsheet formula
    os.mkfifo(folder / "pipe.jpg")  # reading it would block forever
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    out = tmp_path / "predictions.csv"
    result = predict(repo, env, "models/export", folder, "--out", out, timeout=120)
    assert result.returncode == 0, result.stderr
    found = rows(out)
    assert found[str(folder / "ok.jpg")]["label"] and found[str(folder / "caf\\xe9-latin1.jpg")]["label"]
    assert found[str(folder / "pipe.jpg")]["error"].startswith("not_a_file")
    assert found[str(folder / "gone.jpg")]["error"].startswith("broken_symlink")
    assert found[str(folder / "=HYPERLINK(1).jpg")]["label"]
    # a cell that starts
    formula = predict(folder, env, repo / "models/export", "=HYPERLINK(1).jpg", "--out", out)
    assert formula.returncode == 0 and list(rows(out)) == ["'=HYPERLINK(1).jpg"]  # with `=` is quoted

    for named, message in [
        (folder / "pipe.jpg", "is not a file or folder (a FIFO, device or socket)"),
        (folder / "gone.jpg", "is a link to a file that does not exist"),
        (tmp_path / "missing.jpg", "missing.jpg does not exist"),
    ]:
        result = predict(repo, env, "models/export", named, "--out", out, timeout=120)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, named
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not an image")
    nothing = predict(repo, env, "models/export", junk, "--out", out)
    assert nothing.returncode == 1 and "no file could be classified: 1 unreadable" in nothing.stderr
    zero = predict(repo, env, "models/export", image, "--top-k", "0")
    assert zero.returncode == 2 and "0 is below 1" in zero.stderr


class Payload:
    """Unpickling it creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def tamper(export: Path, marker: Path) -> None:
    """Swap a weight of model.pt2 for a pickle that runs code, marked `use_pickle`, and write the new file's
    hash into the card, as an attacker who can write the folder would."""
    program = export / "model.pt2"
    with zipfile.ZipFile(program) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config_name = next(name for name in entries if name.endswith("_weights_config.json"))
    config = json.loads(entries[config_name])
    key = next(iter(config["config"]))
    config["config"][key]["use_pickle"] = True
    entries[config_name] = json.dumps(config).encode()
    weight = next(n for n in entries if n.endswith(f"data/weights/{config['config'][key]['path_name']}"))
    entries[weight] = pickle.dumps(Payload(marker))
    with zipfile.ZipFile(program, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    card = json.loads((export / "model_card.json").read_text())
    card["model"]["files"]["model.pt2"] = digest(program)
    (export / "model_card.json").write_text(json.dumps(card))


def test_a_tampered_program_never_runs_code(trained_repo, tmp_path):
    repo, env = trained_repo
    image = sorted((repo / "data/prepared/test").rglob("*.jpg"))[0]
    marker = tmp_path / "code-ran"
    export = tmp_path / "export"
    shutil.copytree(repo / "models/export", export)
    tamper(export, marker)
    # the card no longer matches the one the registry holds: refused before anything is loaded
    checked = predict(repo, env, export, image, "--runtime", "torch", "--out", tmp_path / "p.csv")
    assert checked.returncode == 1 and "is not the card registered for image-classifier" in checked.stderr
    # no registry in reach: the card is the only anchor, and the archive itself is refused
    alone = predict(
        tmp_path,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"},
        export,
        image,
        "--runtime",
        "torch",
        "--out",
        tmp_path / "p.csv",
    )
    assert alone.returncode == 1 and "registry not reachable" in alone.stderr
    assert (
        "stores 'conv1.weight' as a pickle or an object" in alone.stderr and "Traceback" not in alone.stderr
    )
    assert not marker.exists() and not (tmp_path / "none.db").exists()
