"""prepare on a real tiny folder: leak-free splits, every file accounted for, input untouched."""

import csv
import hashlib
import json
import shutil

import pytest
from PIL import Image

from imgcls.config.params import load_params
from stages import prepare
from stages.entry import build_context
from tests.helpers import ROOT, make_image_folder


def folder_hashes(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def in_workspace(tmp_path, monkeypatch):
    """Stages write where the layout says, inside the current folder: here, the test's own."""
    monkeypatch.chdir(tmp_path)


def params_for(tmp_path, data, **changes):
    prepare_params = {
        "data": str(data),
        "image_size": 20,
        "min_per_class": 5,
        "workers": 1,
        "test_data": str(data),
        "val_fraction": 0.15,
        "test_fraction": 0.2,
        **changes,
    }
    return load_params(ROOT / "params.yaml", overrides={"prepare": prepare_params})


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_prepare_splits_resizes_and_accounts_for_every_file(tmp_path, tiny_folder):
    (tiny_folder / "red" / "notes.txt").write_text("not an image")
    (tiny_folder / "red" / "copy.png").write_bytes((tiny_folder / "red" / "img000.png").read_bytes())
    before = folder_hashes(tiny_folder)
    params = params_for(tmp_path, tiny_folder)
    metrics = prepare.run(build_context("prepare", params, computes=False))

    assert folder_hashes(tiny_folder) == before, "the input folder must never change"
    manifest = read_csv(tmp_path / "data" / "prepared" / "manifest.csv")
    excluded = read_csv(tmp_path / "data" / "prepared" / "excluded.csv")
    assert len(manifest) + len(excluded) == len(before) == metrics["input_files"] == 38
    kinds = {e["source"]: e["kind"] for e in excluded}
    assert kinds == {
        "red/notes.txt": "not_image",
        "red/img000.png": "duplicate",
    }  # copy.png sorts first: kept
    assert metrics["excluded_by_kind"] == {"duplicate": 1, "not_image": 1}
    assert len({row["sha256"] for row in manifest}) == len(manifest), "one copy per content"
    assert sum(metrics["split_sizes"].values()) == 36  # each split's size follows its images' hashes
    for split in ("train", "val", "test"):
        assert set(metrics["counts"][split]) == {"red", "green", "blue"}
    for row in manifest:
        with Image.open(tmp_path / "data" / "prepared" / row["file"]) as image:
            assert image.mode == "RGB" and min(image.size) == 20
        assert row["file"].startswith(f"{row['split']}/{row['class']}/")
    headline = json.loads((tmp_path / "metrics/prepare.json").read_text())
    report = json.loads((tmp_path / "reports/prepare.json").read_text())
    assert headline | report == metrics and "counts" not in headline  # per class: detail, not a metric


def test_prepare_is_deterministic(tmp_path, tiny_folder):
    params = params_for(tmp_path, tiny_folder)
    prepare.run(build_context("prepare", params, computes=False))
    first = (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes()
    prepare.run(build_context("prepare", params, computes=False))
    assert (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes() == first


def test_parallel_decoding_gives_the_same_result(tmp_path, tiny_folder):
    prepare.run(build_context("prepare", params_for(tmp_path, tiny_folder, workers=1), computes=False))
    serial = (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes()
    # enough for the process pool
    make_image_folder(tiny_folder, {"red": 40, "green": 40, "blue": 40}, seed=5)
    prepare.run(build_context("prepare", params_for(tmp_path, tiny_folder, workers=2), computes=False))
    assert (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes() != serial  # more files now
    parallel = (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes()
    shutil.rmtree(tmp_path / "data" / "prepared")  # else nothing is decoded again: the last prepare is reused
    prepare.run(build_context("prepare", params_for(tmp_path, tiny_folder, workers=1), computes=False))
    assert (tmp_path / "data" / "prepared" / "manifest.csv").read_bytes() == parallel


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "is a file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
    ],
)
def test_bad_data_path_fails_before_any_work(tmp_path, make, message):
    with pytest.raises(
        (FileNotFoundError, NotADirectoryError, ValueError), match=f"prepare.data=.*{message}"
    ):
        prepare.run(build_context("prepare", params_for(tmp_path, make(tmp_path)), computes=False))
    assert not (tmp_path / "data" / "prepared").exists()


def test_input_inside_an_output_is_refused_before_anything_is_deleted(tmp_path):
    inside = make_image_folder(tmp_path / "data" / "prepared" / "mine", {"red": 6, "blue": 6})
    before = folder_hashes(inside)
    with pytest.raises(
        ValueError,
        match=r"prepare\.data = '.*/data/prepared/mine' overlaps data/prepared, which "
        r"the prepare stage deletes and rewrites",
    ):
        params_for(tmp_path, inside)
    assert folder_hashes(inside) == before


def test_same_pixels_in_other_bytes_are_duplicates(tmp_path, tiny_folder):
    """A re-saved copy (other metadata or trailing bytes) is the same image: never in two splits."""
    original = (tiny_folder / "red" / "img000.png").read_bytes()
    (tiny_folder / "red" / "resaved.png").write_bytes(original + b"trailing bytes")
    (tiny_folder / "green" / "relabelled.png").write_bytes(original + b"other trailing bytes")
    metrics = prepare.run(build_context("prepare", params_for(tmp_path, tiny_folder), computes=False))
    kinds = {e["source"]: e["kind"] for e in read_csv(tmp_path / "data" / "prepared" / "excluded.csv")}
    assert kinds == {
        "green/relabelled.png": "label_conflict",
        "red/img000.png": "label_conflict",
        "red/resaved.png": "label_conflict",
    }
    assert metrics["included"] == 35


def test_fixed_test_set_is_the_test_split_and_never_leaks(tmp_path, tiny_folder):
    test_folder = make_image_folder(tmp_path / "official_test", {"red": 6, "green": 6, "blue": 6}, seed=9)
    (tiny_folder / "red" / "leak.png").write_bytes((test_folder / "red" / "img000.png").read_bytes())
    relabelled = (test_folder / "red" / "img001.png").read_bytes() + b"resaved"  # other bytes, same pixels
    (tiny_folder / "blue" / "relabelled.png").write_bytes(relabelled)
    before = folder_hashes(tiny_folder), folder_hashes(test_folder)
    metrics = prepare.run(
        build_context(
            "prepare",
            params_for(tmp_path, tiny_folder, test_data=str(test_folder), test_fraction=0.0),
            computes=False,
        )
    )

    assert (folder_hashes(tiny_folder), folder_hashes(test_folder)) == before
    rows = read_csv(tmp_path / "data" / "prepared" / "manifest.csv")
    assert {r["source"] for r in rows if r["split"] == "test"} == {
        f"{c}/img{i:03d}.png" for c in ("red", "green", "blue") for i in range(6)
    }
    assert all(r["origin"] == "test_data" for r in rows if r["split"] == "test")
    assert metrics["split_sizes"]["test"] == 18 and sum(metrics["split_sizes"].values()) == 54
    excluded = {e["source"]: e for e in read_csv(tmp_path / "data" / "prepared" / "excluded.csv")}
    assert {k: e["kind"] for k, e in excluded.items()} == {
        "blue/relabelled.png": "in_test_data",
        "red/leak.png": "in_test_data",
    }
    assert "labelled 'red' there" in excluded["blue/relabelled.png"]["reason"]
    test_pixels = {r["pixels_sha256"] for r in rows if r["split"] == "test"}
    assert not test_pixels & {r["pixels_sha256"] for r in rows if r["split"] != "test"}


def test_fixed_test_set_must_match_classes_and_fractions(tmp_path, tiny_folder):
    test_folder = make_image_folder(tmp_path / "official_test", {"red": 3, "green": 3, "purple": 3}, seed=9)
    with pytest.raises(ValueError, match=r"prepare.test_fraction = 0.2 must be 0"):
        params_for(tmp_path, tiny_folder, test_data=str(test_folder), test_fraction=0.2)
    with pytest.raises(
        ValueError,
        match=r"test_data=.*classes \['green', 'purple', 'red'\] but the training "
        r"data has \['blue', 'green', 'red'\]",
    ):
        prepare.run(
            build_context(
                "prepare",
                params_for(tmp_path, tiny_folder, test_data=str(test_folder), test_fraction=0.0),
                computes=False,
            )
        )
