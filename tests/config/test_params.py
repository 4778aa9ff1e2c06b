"""params.yaml is loaded once into typed objects; every mistake names the key, the value and the fix."""

import shutil

import pytest
import yaml

from imgcls.config.params import load_params
from tests.helpers import ROOT


def write(tmp_path, change):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_repo_params_load_typed():
    params = load_params(ROOT / "params.yaml")
    assert params.model.arch == "resnet18"
    assert isinstance(params.train.lr, float) and isinstance(params.train.epochs, int)
    assert params.prepare.data == "data/sample/target"


def test_unknown_key_names_key_and_allowed(tmp_path):
    path = write(tmp_path, lambda p: p["train"].update(learning_rate=0.1))
    with pytest.raises(ValueError, match=r"unknown key\(s\) train\.learning_rate.*allowed.*\blr\b"):
        load_params(path)


def test_bad_choice_lists_allowed_values(tmp_path):
    path = write(tmp_path, lambda p: p["model"].update(arch="vgg16"))
    with pytest.raises(
        ValueError, match=r"model\.arch = 'vgg16'.*resnet18, resnet34, resnet50, resnet101, resnet152"
    ):
        load_params(path)


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(ValueError, match=r"train\.epochs = 'ten' must be int"):
        load_params(write(tmp_path, lambda p: p["train"].update(epochs="ten")))
    with pytest.raises(ValueError, match=r"prepare\.test_fraction = 0\.9 is out of range"):
        load_params(write(tmp_path, lambda p: p["prepare"].update(test_fraction=0.9)))
    with pytest.raises(ValueError, match=r"train\.hflip = 1 must be bool"):
        load_params(write(tmp_path, lambda p: p["train"].update(hflip=1)))


def test_missing_key_and_section(tmp_path):
    with pytest.raises(ValueError, match=r"missing key\(s\) train\.lr"):
        load_params(write(tmp_path, lambda p: p["train"].pop("lr")))
    with pytest.raises(ValueError, match=r"missing key\(s\) export"):
        load_params(write(tmp_path, lambda p: p.pop("export")))


def test_int_accepted_for_float_and_overrides_apply():
    params = load_params(ROOT / "params.yaml", overrides={"train": {"lr": 1}})
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), float("-inf")])
def test_non_finite_numbers_are_refused(tmp_path, value):
    with pytest.raises(ValueError, match=r"train\.weight_decay = .* must be a finite number"):
        load_params(write(tmp_path, lambda p: p["train"].update(weight_decay=value)))


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("export", "out", "../victim", r"unknown key\(s\) export\.out"),  # where stages write is not a param
        (
            "prepare",
            "data",
            "data",
            r"prepare\.data = 'data' overlaps data/prepared, which the prepare stage deletes",
        ),
        (
            "prepare",
            "test_data",
            "models",
            r"prepare\.test_data = 'models' overlaps models/pretrained\.pt, which the "
            r"pretrain stage",
        ),
        (
            "pretrain",
            "file",
            "models/export/model.onnx",
            r"pretrain\.file = 'models/export/model\.onnx' overlaps "
            r"models/export, which the export stage",
        ),
        ("prepare", "val_fraction", 0.0, r"prepare\.val_fraction = 0 leaves no val split"),
        ("export", "registered_model", "", r"export\.registered_model is empty"),
        ("train", "experiment", "  ", r"train\.experiment is empty"),
    ],
)
def test_inputs_that_an_output_would_delete_or_values_that_break_a_stage_are_refused(
    section, key, value, message
):
    with pytest.raises(ValueError, match=message):
        load_params(ROOT / "params.yaml", overrides={section: {key: value}})


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("\n  lr: 0.01 ", "\n  lr: 0.02\n  lr: 0.01 ")
    (tmp_path / "params.yaml").write_text(text)
    first = next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith("  lr: 0.02"))
    with pytest.raises(
        ValueError,
        match=rf"key `lr` appears twice in one section \(lines {first} and "
        rf"{first + 1}\), and only one would count; keep one",
    ):
        load_params(tmp_path / "params.yaml")
    twice = (ROOT / "params.yaml").read_text() + "\ntrain:\n  lr: 0.5\n"
    (tmp_path / "params.yaml").write_text(twice)
    with pytest.raises(ValueError, match=r"key `train` appears twice"):
        load_params(tmp_path / "params.yaml")


def test_exponent_notation_is_a_number_as_dvc_reads_it(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("\n  lr: 0.01 ", "\n  lr: 1e-4 ")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.lr == 0.0001


def test_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model:\n  arch: resnet18\n train: [\n")
    with pytest.raises(ValueError, match=r"params.yaml is not valid YAML at line 3, column 2"):
        load_params(path)


def test_an_input_smaller_than_the_architecture_takes_is_refused(tmp_path):
    path = write(tmp_path, lambda p: p["model"].update(arch="convnext_tiny"))  # the sample's 28 px crops
    with pytest.raises(
        ValueError,
        match=r"train\.crop_size = 28 is below the smallest input model\.arch = "
        r"convnext_tiny accepts \(32 px",
    ):
        load_params(path)
    bigger = write(
        tmp_path, lambda p: (p["model"].update(arch="convnext_tiny"), p["train"].update(crop_size=32))
    )
    with pytest.raises(ValueError, match=r"pretrain\.crop_size = 28 is below"):
        load_params(bigger)


def test_data_none_stands_for_no_folder_and_is_refused_where_a_stage_would_read_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "none").mkdir(parents=True)
    (tmp_path / "data" / "none" / "README.md").write_text("stays empty")
    drawn = {"test_data": "data/none", "test_fraction": 0.2}
    params = load_params(
        ROOT / "params.yaml", {"prepare": drawn, "pretrain": {"source": "none", "data": "data/none"}}
    )
    assert not params.prepare.fixed_test_set
    with pytest.raises(
        ValueError, match=r"prepare\.test_data = 'data/none' is no separate test set.*test_fraction"
    ):
        load_params(ROOT / "params.yaml", {"prepare": {"test_data": "data/none", "test_fraction": 0.0}})
    with pytest.raises(
        ValueError, match=r"pretrain\.source = dataset pretrains on pretrain\.data, which is data/none"
    ):
        load_params(
            ROOT / "params.yaml", {"prepare": drawn, "pretrain": {"source": "dataset", "data": "data/none"}}
        )
    with pytest.raises(ValueError, match=r"prepare reads its images from prepare\.data, which is data/none"):
        load_params(ROOT / "params.yaml", {"prepare": {"data": "data/none", **drawn}})
    (tmp_path / "data" / "none" / "cat").mkdir()
    (tmp_path / "data" / "none" / "cat" / "1.png").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"prepare\.test_data = data/none, which must stay empty.*holds cat, cat/1\.png"
    ):
        load_params(ROOT / "params.yaml", {"prepare": drawn})
    shutil.rmtree(tmp_path / "data" / "none")
    with pytest.raises(ValueError, match=r"prepare\.test_data = data/none, which is missing; restore it"):
        load_params(ROOT / "params.yaml", {"prepare": drawn})
