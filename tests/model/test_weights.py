"""Starting weights: a local file works; ImageNet offline without a cache fails with the way out."""

import pytest
import torch
from torchvision.models import get_model

from imgcls.config.params import load_params
from imgcls.model.checkpoints import load_checkpoint
from imgcls.model.weights import WeightsError, imagenet_cache_path
from stages import pretrain
from stages.entry import build_context
from tests.helpers import ROOT


@pytest.fixture(autouse=True)
def in_workspace(tmp_path, monkeypatch):
    """pretrain writes models/pretrained.pt and its metrics inside the current folder: the test's own."""
    monkeypatch.chdir(tmp_path)


def pretrain_params(tmp_path, **changes):
    return load_params(ROOT / "params.yaml", overrides={"pretrain": changes})


def test_local_file_is_loaded_with_provenance(tmp_path):
    source = get_model("resnet18", weights=None)
    torch.save(source.state_dict(), tmp_path / "air-gapped.pth")
    pretrain.run(
        build_context(
            "pretrain", pretrain_params(tmp_path, source="file", file=str(tmp_path / "air-gapped.pth"))
        )
    )
    checkpoint = load_checkpoint(tmp_path / "models/pretrained.pt", made_by="pretrain")
    assert checkpoint["arch"] == "resnet18"
    assert checkpoint["provenance"]["source"] == "file"
    assert len(checkpoint["provenance"]["origin_sha256"]) == 64
    assert torch.equal(checkpoint["state_dict"]["conv1.weight"], source.state_dict()["conv1.weight"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"\x00garbage" * 100), r"is not a PyTorch weights file"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (
            lambda p: (
                torch.save(get_model("resnet18", weights=None).state_dict(), p)
                or p.write_bytes(p.read_bytes()[:5000])
            ),
            r"is truncated or corrupt",
        ),
        (
            lambda p: torch.save(get_model("resnet18", weights=None), p),
            r"holds a pickled Python object \(a whole model\?\)",
        ),
        (
            lambda p: torch.save(get_model("resnet34", weights=None).state_dict(), p),
            r"holds weights made for resnet34, "
            r"not model.arch=resnet18",
        ),
        (lambda p: torch.save([1, 2, 3], p), r"is not a state dict"),
    ],
)
def test_bad_weights_file_gets_one_line_naming_it(tmp_path, make, message):
    path = tmp_path / "weights.pth"
    make(path)
    with pytest.raises(
        WeightsError, match=f"^{tmp_path}/weights.pth \\(pretrain.file\\) {message}|^{path} {message}"
    ):
        pretrain.run(build_context("pretrain", pretrain_params(tmp_path, source="file", file=str(path))))
    assert not (tmp_path / "models/pretrained.pt").exists()


def test_pinned_full_sha256_is_enforced(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(get_model("resnet18", weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="not the pretrain.sha256"):
        pretrain.run(
            build_context(
                "pretrain", pretrain_params(tmp_path, source="file", file=str(path), sha256="0" * 64)
            )
        )


def test_imagenet_offline_without_cache_names_file_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    expected, _ = imagenet_cache_path("resnet18")
    assert expected == tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError) as error:
        pretrain.run(build_context("pretrain", pretrain_params(tmp_path, source="imagenet", download=False)))
    message = str(error.value)
    assert str(expected) in message and "pretrain.source: file" in message and "dataset | none" in message
    assert not (tmp_path / "models/pretrained.pt").exists()


def test_imagenet_cache_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    expected, _ = imagenet_cache_path("resnet18")
    expected.parent.mkdir(parents=True)
    torch.save(get_model("resnet18", weights=None).state_dict(), expected)
    with pytest.raises(WeightsError, match="does not match the SHA-256 prefix 'f37072fd'"):
        pretrain.run(build_context("pretrain", pretrain_params(tmp_path, source="imagenet", download=False)))


def test_none_is_seeded_random_init(tmp_path):
    pretrain.run(build_context("pretrain", pretrain_params(tmp_path, source="none", seed=3)))
    first = load_checkpoint(tmp_path / "models/pretrained.pt", made_by="pretrain")["state_dict"][
        "conv1.weight"
    ]
    pretrain.run(build_context("pretrain", pretrain_params(tmp_path, source="none", seed=3)))
    again = load_checkpoint(tmp_path / "models/pretrained.pt", made_by="pretrain")["state_dict"][
        "conv1.weight"
    ]
    assert torch.equal(first, again)
