"""The speed switches are wired in: uint8 batches normalised on the device give the serving transform's exact
input, channels_last really reaches the model, the CUDA-only switches (fused AdamW, bf16 autocast, cuDNN
autotuning in speed mode) are chosen for a CUDA device, and cached frozen-backbone features are exactly what
the head sees."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from imgcls.data.datasets import DecodedImages, check_memory, image_folder, read_image
from imgcls.data.images import save_prepared
from imgcls.data.loaders import make_loader
from imgcls.data.transforms import (
    eval_crop,
    eval_transform,
    preprocessing_spec,
    to_model_input,
    train_transform,
)
from imgcls.engine import runtime
from imgcls.engine.features import FeatureViews, backbone_features, head_of
from imgcls.engine.inference import autocast
from imgcls.engine.loop import fit
from imgcls.engine.recipe import Recipe, make_optimizer
from imgcls.export.formats import export_program
from imgcls.model.networks import build_model
from tests.engine.feature_shards import Pictures
from tests.helpers import ROOT, attempt, clean_env, free_port

CUDA = torch.device("cuda")


def test_uint8_batches_normalised_on_the_device_equal_the_serving_transform(tmp_path):
    pixels = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_prepared(Image.fromarray(pixels.numpy()), tmp_path / "a.jpg", "jpeg", 95)
    spec = preprocessing_spec(16)
    image = read_image(str(tmp_path / "a.jpg"))
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    batch = eval_crop(spec)(image).unsqueeze(0)
    expected = eval_transform(spec)(Image.open(tmp_path / "a.jpg").convert("RGB")).unsqueeze(0)
    assert torch.equal(to_model_input(batch, torch.device("cpu")), expected)
    last = to_model_input(batch, torch.device("cpu"), runtime.memory_format(True))
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, expected)


@pytest.mark.parametrize("scale_min, hflip", [(0.08, True), (1.0, True), (0.5, False)])
def test_train_crop_draws_and_makes_what_the_composed_v2_transforms_do(scale_min, hflip):
    from torchvision.transforms import v2

    steps = [v2.ToImage(), v2.RandomResizedCrop(24, scale=(scale_min, 1.0), antialias=True)]
    composed = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if hflip else []))
    crop = train_transform(24, scale_min, hflip)
    generator = torch.Generator().manual_seed(3)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        for h, w in [(40, 56), (56, 40), (24, 24), (31, 200), (100, 100)] * 8
    ]
    images += [
        Image.fromarray(images[0].permute(1, 2, 0).numpy()),
        Image.fromarray(images[3].permute(1, 2, 0).numpy()),
    ]
    torch.manual_seed(7)
    expected = [composed(image) for image in images]
    after_composed = torch.rand(1)
    torch.manual_seed(7)
    made = [crop(image) for image in images]
    assert torch.rand(1) == after_composed  # the same number of draws: later images' crops do not shift
    assert all(type(m) is torch.Tensor and m.dtype == torch.uint8 and m.shape == (3, 24, 24) for m in made)
    assert all(torch.equal(m, e) for m, e in zip(made, expected))


def test_adamw_is_fused_everywhere_and_cuda_switches_only_on_cuda():
    model = torch.nn.Linear(3, 2)
    assert make_optimizer(model, "adamw", 1e-3, 0.0, 0.0).defaults["fused"] is True  # CPU and CUDA alike
    cast = autocast(CUDA)
    assert isinstance(cast, torch.autocast) and cast.device == "cuda" and cast.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(torch.device("cpu")), torch.autocast)  # ~23x slower on these CPUs
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_num_threads()
    try:
        runtime.pin(False, 0, CUDA)  # speed mode: autotuned cuDNN kernels
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.set_num_threads(saved[2])


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_cached_features_are_exactly_the_heads_input(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3).eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    loader = [(images[:4], torch.tensor([0, 1, 2, 0])), (images[4:], torch.tensor([1, 2]))]
    views, targets = backbone_features(model, arch, loader, torch.device("cpu"), hflip=True)
    assert views.shape == (2, 6, head_of(model, arch).in_features) and targets.tolist() == [0, 1, 2, 0, 1, 2]
    with torch.no_grad():
        plain = model(to_model_input(images, torch.device("cpu")))
        mirrored = model(to_model_input(images.flip(-1), torch.device("cpu")))
        head = head_of(model, arch)
        torch.testing.assert_close(head(views[0]), plain, rtol=0, atol=1e-5)
        torch.testing.assert_close(head(views[1]), mirrored, rtol=0, atol=1e-5)


def test_cached_views_are_drawn_per_image_and_epoch_from_the_seed():
    views = torch.stack([torch.zeros(40, 2), torch.ones(40, 2)])  # view 0 all zeros, view 1 all ones
    loader = make_loader(FeatureViews(views, torch.arange(40) % 2), 8, True, 0, seed=5)

    def epoch(number: int) -> torch.Tensor:
        loader.sampler.set_epoch(number)
        return torch.cat([features[:, 0] for features, _ in loader])

    first = epoch(1)
    assert torch.equal(first, epoch(1)) and not torch.equal(first, epoch(2))
    assert 0 < first.sum() < len(first)  # both views drawn


def test_images_decoded_into_ram_give_the_same_batches_as_the_files(tiny_folder):
    dataset = image_folder(str(tiny_folder), train_transform(12, 0.5, True), read_image)
    cached = DecodedImages(dataset, num_workers=2)
    assert len(cached) == len(dataset) == 36 and cached.nbytes == 36 * 3 * 16 * 16

    def epoch(data, workers: int) -> list[torch.Tensor]:
        loader = make_loader(data, 8, True, workers, seed=3)
        loader.sampler.set_epoch(2)
        return [images for images, _ in loader]

    assert all(torch.equal(a, b) for a, b in zip(epoch(dataset, 0), epoch(cached, 2)))
    with pytest.raises(ValueError, match=r"train.cache_images: decoding .* more than half"):
        check_memory(2**62, "data/prepared/train")


def test_compiled_training_steps_leave_the_model_unwrapped():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    data = [(torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))] * 2
    recipe = Recipe(
        optimizer="adamw",
        lr=0.1,
        weight_decay=0.0,
        momentum=0.0,
        warmup_epochs=0,
        epochs=2,
        label_smoothing=0.0,
        monitor=None,
        patience=2,
        frozen_backbone=False,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history, _ = fit(model, FixedOrder(data), None, recipe, torch.device("cpu"), compile_model=True)
    assert len(history) == 2 and list(model.state_dict()) == ["1.weight", "1.bias"]  # no `_orig_mod.` prefix
    # the compiled steps trained it
    assert not torch.equal(model.state_dict()["1.weight"], before["1.weight"])


class FixedOrder(list):
    """Pre-made batches with the sampler seam `fit` calls each epoch."""

    class sampler:  # noqa: N801
        @staticmethod
        def set_epoch(epoch: int) -> None:
            pass


def test_exported_program_is_folded_and_the_same_bytes_every_time(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    example = torch.randn(2, 3, 16, 16)
    export_program(model, example, tmp_path / "a.pt2")
    export_program(model, example, tmp_path / "b.pt2")  # same model, same bytes: the card's hash is stable
    assert (tmp_path / "a.pt2").read_bytes() == (tmp_path / "b.pt2").read_bytes()
    program = torch.export.load(tmp_path / "a.pt2")
    assert not any("batch_norm" in str(node.target) for node in program.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(example), model(example), rtol=0, atol=1e-5)


def test_two_ranks_each_compute_their_share_of_the_features_and_both_end_with_all_of_them(tmp_path):
    """Under torchrun (a fresh interpreter per rank: a spawned child would inherit this process's sys.path,
    where MLflow may have put a served model's partial copy of imgcls)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    command += [str(free_port()), "-m", "tests.engine.feature_shards", str(tmp_path / "f")]
    ranks = attempt(command, cwd=ROOT, env=clean_env(), timeout=300)
    assert ranks.returncode == 0, ranks.stdout[-3000:] + ranks.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank computed
    try:
        torch.manual_seed(0)
        model = build_model("resnet18", 3).eval()
        alone = {}
        for batch in (4, 16):
            loader = make_loader(Pictures(), batch, False, 0, 0)
            alone[batch] = backbone_features(model, "resnet18", loader, torch.device("cpu"), hflip=True)
    finally:
        torch.set_num_threads(threads)
    for batch, rank in [(4, 0), (4, 1), (16, 0), (16, 1)]:
        views, targets = alone[batch]
        shared_views, shared_targets = torch.load(tmp_path / f"f.{batch}.{rank}", weights_only=True)
        assert shared_targets.tolist() == targets.tolist() == [i % 3 for i in range(13)]
        assert shared_views.shape == views.shape == (2, 13, 512)
        torch.testing.assert_close(shared_views, views, rtol=0, atol=0)  # the same batches: the same bits
