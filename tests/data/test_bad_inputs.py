"""Real-world folders: every input file ends up in exactly one split or in excluded.csv with a reason."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config.params import load_params
from imgcls.data.datasets import UnreadableImageError, split_folder
from imgcls.data.loaders import make_loader
from imgcls.data.transforms import eval_transform, preprocessing_spec
from stages import prepare
from stages.entry import build_context, worker_message
from tests.helpers import ROOT, make_image_folder


def snapshot(root):
    """Path -> (sha256 or link target) for everything under root, links not followed."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[key] = "link:" + os.readlink(path)
        elif path.is_file():
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture(autouse=True)
def in_workspace(tmp_path, monkeypatch):
    """Stages write where the layout says, inside the current folder: here, the test's own."""
    monkeypatch.chdir(tmp_path)


def params_for(tmp_path, data, **changes):
    values = {
        "data": str(data),
        "image_size": 16,
        "min_per_class": 4,
        "min_size": 8,
        "workers": 1,
        "test_data": str(data),
        "val_fraction": 0.15,
        "test_fraction": 0.2,
        **changes,
    }
    return load_params(ROOT / "params.yaml", overrides={"prepare": values})


def excluded_kinds(tmp_path):
    with open(tmp_path / "data" / "prepared" / "excluded.csv", newline="", encoding="utf-8") as f:
        return {row["source"]: row["kind"] for row in csv.DictReader(f)}


def manifest(tmp_path):
    with open(tmp_path / "data" / "prepared" / "manifest.csv", newline="", encoding="utf-8") as f:
        return {row["source"]: row for row in csv.DictReader(f)}


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def picture(mode="RGB", size=(24, 20), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def bomb_png(width=60000, height=60000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def messy(tmp_path):
    """A folder with every kind of trouble next to enough good images per class."""
    root = make_image_folder(tmp_path / "messy", {"cats": 6, "dogs dogs": 6, "ünïcödé": 6}, size=20)
    cats = root / "cats"
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "page.jpg").write_text("<html><body>404 not found</body></html>")
    (cats / "noise.png").write_bytes(os.urandom(300))
    (cats / "truncated.jpg").write_bytes(encoded(picture(size=(64, 64)), "JPEG")[:400])
    (cats / "tiny.png").write_bytes(encoded(picture(size=(4, 4)), "PNG"))
    (cats / "bomb.png").write_bytes(bomb_png())
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._img000.png"):
        (cats / name).write_bytes(b"\0\1metadata")
    (cats / "readme.txt").write_text("notes")
    (root / "stray.png").write_bytes(encoded(picture(seed=9), "PNG"))  # not inside a class folder
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "x.png").write_bytes(encoded(picture(seed=8), "PNG"))
    (cats / "nested" / "deeper").mkdir(parents=True)
    (cats / "nested" / "deeper" / "inside.png").write_bytes(encoded(picture(seed=7), "PNG"))
    return root


def test_every_bad_file_is_reported_and_nothing_is_lost(tmp_path, messy):
    before = snapshot(messy)
    metrics = prepare.run(build_context("prepare", params_for(tmp_path, messy), computes=False))
    kinds = excluded_kinds(tmp_path)
    assert kinds == {
        "cats/empty.jpg": "empty_file",
        "cats/page.jpg": "not_image",
        "cats/noise.png": "not_image",
        "cats/truncated.jpg": "corrupt",
        "cats/tiny.png": "too_small",
        "cats/bomb.png": "decompression_bomb",
        "cats/.DS_Store": "hidden_file",
        "cats/Thumbs.db": "hidden_file",
        "cats/desktop.ini": "hidden_file",
        "cats/._img000.png": "hidden_file",
        "cats/readme.txt": "not_image",
        "stray.png": "outside_class_folder",
        ".ipynb_checkpoints/x.png": "hidden_folder",
    }
    included = manifest(tmp_path)
    assert (
        "cats/nested/deeper/inside.png" in included
        and included["cats/nested/deeper/inside.png"]["class"] == "cats"
    )
    assert {row["class"] for row in included.values()} == {"cats", "dogs dogs", "ünïcödé"}
    assert len(included) + len(kinds) == metrics["input_files"] == len(before)
    assert metrics["excluded_by_kind"]["hidden_file"] == 4
    assert snapshot(messy) == before
    first = (
        (tmp_path / "data" / "prepared" / "excluded.csv").read_bytes(),
        (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes(),
    )
    prepare.run(build_context("prepare", params_for(tmp_path, messy), computes=False))
    assert (
        (tmp_path / "data" / "prepared" / "excluded.csv").read_bytes(),
        (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes(),
    ) == first


def test_on_bad_file_fail_lists_them_and_leaves_input_and_output_untouched(tmp_path, messy):
    before = snapshot(messy)
    prepare.run(build_context("prepare", params_for(tmp_path, messy), computes=False))
    prepared = snapshot(tmp_path / "data" / "prepared")
    with pytest.raises(
        ValueError,
        match=r"(?s)6 unusable image\(s\).*cats/bomb.png: decompression bomb.*"
        r"cats/empty.jpg: empty file.*cats/truncated.jpg: corrupt.*"
        r"on_bad_file: skip.*data/prepared is unchanged",
    ):
        prepare.run(build_context("prepare", params_for(tmp_path, messy, on_bad_file="fail"), computes=False))
    assert snapshot(messy) == before
    assert snapshot(tmp_path / "data" / "prepared") == prepared  # the last good output, whole
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["prepared"]  # nothing half-written beside it


def test_unusual_valid_images_become_upright_rgb(tmp_path):
    root = make_image_folder(tmp_path / "odd", {"a": 5, "b": 5}, size=20)
    base = picture(size=(30, 20))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    rotated = base.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    frames = [picture(size=(30, 20), seed=s) for s in (1, 2)]
    files = {
        "gray.png": encoded(base.convert("L"), "PNG"),
        "deep16.png": encoded(
            Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)), "PNG"
        ),
        "palette.png": encoded(palette, "PNG", transparency=0),
        "rgba.png": encoded(picture(size=(30, 20), seed=3).convert("RGBA"), "PNG"),  # lossless formats: other
        "cmyk.jpg": encoded(base.convert("CMYK"), "JPEG"),
        "progressive.jpg": encoded(base, "JPEG", progressive=True),
        "animated.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "photo.webp": encoded(base, "WEBP"),
        "scan.tiff": encoded(picture(size=(30, 20), seed=4), "TIFF"),  # pictures, or they would be duplicates
        "old.bmp": encoded(base, "BMP"),
        "rotated.jpg": encoded(rotated, "JPEG", exif=exif),
    }
    for name, data in files.items():
        (root / "a" / name).write_bytes(data)
    prepare.run(build_context("prepare", params_for(tmp_path, root), computes=False))
    assert excluded_kinds(tmp_path) == {}
    rows = manifest(tmp_path)
    for name in files:
        with Image.open(tmp_path / "data" / "prepared" / rows[f"a/{name}"]["file"]) as image:
            assert image.mode == "RGB", name
            expected = (16, 24) if name == "rotated.jpg" else (24, 16)  # EXIF-rotated: portrait, upright
            assert image.size == expected, name


def test_class_folders_empty_small_or_hidden(tmp_path):
    root = make_image_folder(tmp_path / "classes", {"big": 8, "other": 8, "small": 2}, size=20)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"min_per_class=4.*'empty': 0, 'small': 2.*small_classes: drop"):
        prepare.run(build_context("prepare", params_for(tmp_path, root), computes=False))
    metrics = prepare.run(
        build_context("prepare", params_for(tmp_path, root, small_classes="drop"), computes=False)
    )
    assert metrics["dropped_classes"] == {"empty": 0, "small": 2}
    assert set(metrics["counts"]["train"]) == {"big", "other"}
    assert list(excluded_kinds(tmp_path).values()) == ["small_class", "small_class"]


def test_duplicates_and_label_conflicts(tmp_path):
    root = make_image_folder(tmp_path / "dups", {"a": 6, "b": 6}, size=20)
    (root / "a" / "again.png").write_bytes((root / "a" / "img001.png").read_bytes())
    (root / "b" / "clash.png").write_bytes((root / "a" / "img002.png").read_bytes())
    prepare.run(build_context("prepare", params_for(tmp_path, root), computes=False))
    kinds = excluded_kinds(tmp_path)
    assert kinds == {
        "a/img001.png": "duplicate",
        "a/img002.png": "label_conflict",
        "b/clash.png": "label_conflict",
    }
    assert len({row["sha256"] for row in manifest(tmp_path).values()}) == len(manifest(tmp_path))
    with pytest.raises(ValueError, match="a/img002.png, b/clash.png"):
        prepare.run(build_context("prepare", params_for(tmp_path, root, on_conflict="fail"), computes=False))


def test_symlinks_outside_are_not_followed_unless_allowed(tmp_path):
    root = make_image_folder(tmp_path / "links", {"a": 6, "b": 6}, size=20)
    outside = make_image_folder(tmp_path / "elsewhere", {"x": 1}, size=20, seed=5) / "x" / "img000.png"
    (root / "a" / "link.png").symlink_to(outside)
    (root / "a" / "broken.png").symlink_to(tmp_path / "nothing.png")
    before = snapshot(root)
    prepare.run(build_context("prepare", params_for(tmp_path, root), computes=False))
    assert excluded_kinds(tmp_path) == {"a/link.png": "symlink_outside", "a/broken.png": "broken_symlink"}
    prepare.run(build_context("prepare", params_for(tmp_path, root, follow_symlinks=True), computes=False))
    assert "a/link.png" in manifest(tmp_path)
    assert snapshot(root) == before


def test_split_changed_after_prepare_fails_with_the_path(tmp_path, tiny_folder):
    prepare.run(build_context("prepare", params_for(tmp_path, tiny_folder), computes=False))
    prepared = tmp_path / "data" / "prepared"
    spec = preprocessing_spec(16)
    victim = sorted((prepared / "train" / "red").iterdir())[0]
    victim.write_bytes(b"replaced by something that is not an image")
    loader = make_loader(split_folder(prepared, "train", eval_transform(spec)), 4, False, 1, 0)
    with pytest.raises(UnreadableImageError) as error:
        for _ in loader:
            pass
    assert str(victim) in worker_message(str(error.value))
    assert worker_message(str(error.value)).startswith("cannot read")
    victim.unlink()
    with pytest.raises(UnreadableImageError, match=f"missing \\['train/red/{victim.name}'\\]"):
        split_folder(prepared, "train", eval_transform(spec))
    untouched = make_loader(split_folder(prepared, "val", eval_transform(spec)), 2, False, 0, 0)
    assert torch.is_tensor(next(iter(untouched))[0])
