"""An incremental prepare: what the last data/prepared holds is reused by its input's hash, only new files are
decoded, nothing already split moves, and the result is the bytes a full prepare makes."""

import hashlib
import logging

import pytest
from PIL import Image

import imgcls.data.decoding
from imgcls.config.params import load_params
from stages import prepare
from stages.entry import build_context
from tests.helpers import ROOT, make_image_folder


def params_for(data, **changes):
    settings = {"data": str(data), "test_data": str(data), "image_size": 20, "min_per_class": 5, "workers": 1}
    settings |= {"val_fraction": 0.15, "test_fraction": 0.2, **changes}
    return load_params(ROOT / "params.yaml", overrides={"prepare": settings})


def prepared_files(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def decodes(monkeypatch):
    """How many images prepare decodes (workers: 1, so in this process)."""
    calls = []
    real = imgcls.data.decoding.decode_image

    def counted(data, *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(imgcls.data.decoding, "decode_image", counted)
    return calls


def run_prepare(workspace, params, monkeypatch):
    monkeypatch.chdir(workspace)
    prepare.run(build_context("prepare", params, computes=False))
    manifest = (workspace / "data/prepared/manifest.csv").read_text(encoding="utf-8").splitlines()[1:]
    return {row.split(",")[1]: row.split(",")[3] for row in manifest}  # source -> split


def test_added_and_removed_images_decode_only_the_new_and_make_what_a_full_prepare_makes(
    tmp_path, monkeypatch, decodes, caplog
):
    images = make_image_folder(tmp_path / "images", {"red": 20, "green": 20, "blue": 20})
    with Image.open(images / "red/img000.png") as original:  # a re-saved copy: other bytes, same pixels
        original.save(images / "red/zz_copy.png", compress_level=1)
    workspace = tmp_path / "repo"
    workspace.mkdir()
    params = params_for(images)
    first = run_prepare(workspace, params, monkeypatch)
    assert len(decodes) == 61 and "red/zz_copy.png" not in first  # left out as a duplicate of img000

    make_image_folder(tmp_path / "more", {"red": 3, "green": 0, "blue": 2}, seed=9)
    for new in (tmp_path / "more").rglob("*.png"):
        new.rename(images / new.parent.name / f"new_{new.name}")
    (images / "green/img005.png").unlink()
    (images / "red/img000.png").unlink()  # its copy, left out last time, is kept now
    decodes.clear()
    with caplog.at_level(logging.INFO):
        second = run_prepare(workspace, params, monkeypatch)
    assert len(decodes) == 6, "5 new images and the copy that is kept now, nothing else"
    assert "59 of 64 readable files reused" in caplog.text
    assert {source: second[source] for source in first if source in second} == {
        source: split for source, split in first.items() if source in second
    }, "an image that was there keeps its split"
    assert set(first) - set(second) == {"green/img005.png", "red/img000.png"}

    full = tmp_path / "full"
    full.mkdir()
    decodes.clear()
    run_prepare(full, params, monkeypatch)
    assert len(decodes) == 64
    assert prepared_files(full / "data/prepared") == prepared_files(workspace / "data/prepared")
    for name in ("metrics/prepare.json", "reports/prepare.json"):
        assert (full / name).read_bytes() == (workspace / name).read_bytes()

    caplog.clear()
    with caplog.at_level(logging.INFO):  # 64 files: decoding processes, each given what is known once
        run_prepare(full, params_for(images, workers=2), monkeypatch)
    assert "64 of 64 readable files reused" in caplog.text
    assert prepared_files(full / "data/prepared") == prepared_files(workspace / "data/prepared")


def test_a_changed_shaping_param_or_a_changed_prepared_file_is_made_again(tmp_path, monkeypatch, decodes):
    images = make_image_folder(tmp_path / "images", {"red": 10, "green": 10})
    workspace = tmp_path / "repo"
    workspace.mkdir()
    params = params_for(images)
    run_prepare(workspace, params, monkeypatch)
    made = prepared_files(workspace / "data/prepared")
    victim = workspace / "data/prepared" / next(name for name in made if name.endswith(".jpg"))
    victim.write_bytes(b"not what prepare wrote")
    decodes.clear()
    run_prepare(workspace, params, monkeypatch)
    assert len(decodes) == 1 and prepared_files(workspace / "data/prepared") == made
    for changed in ({"image_size": 24}, {"format": "png"}, {"jpeg_quality": 90}, {"min_size": 4}):
        decodes.clear()
        run_prepare(workspace, params_for(images, **changed), monkeypatch)
        assert len(decodes) == 20, changed
    decodes.clear()
    run_prepare(workspace, params_for(images, min_size=4, seed=1), monkeypatch)
    assert len(decodes) == 0, "the seed decides splits, not pixels"
