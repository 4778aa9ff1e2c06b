"""The pipeline's float work in small, run in one process on whatever CPU runs it (this one, or one qemu
emulates): pin the runtime (or not), then prepare, load, train every architecture a step, evaluate and check
the export, printing one JSON object of hashes and figures. tests/engine/test_cross_cpu.py compares them.

Usage: python tests/engine/cross_cpu_work.py pinned|unpinned OUT_DIR [--archs a,b] [--parts p,q]
OUT_DIR holds the prepared images and the export it makes (`--parts export` needs a model.pt2 and model.onnx
there, from a first run with `--parts write_export`). Exits 3 with the runtime's one line when the CPU
cannot be pinned."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from imgcls.engine import runtime

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("prepare", "loader", "train", "evaluate", "export")  # and write_export (both files) or write_program
CROP = 32  # the smallest input every architecture in the table takes (ResNets divide by 32)


def sha(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(array.contiguous().numpy().tobytes() if isinstance(array, torch.Tensor) else array)
    return digest.hexdigest()[:16]


def inputs() -> list[Path]:
    """Real pictures: Fashion-MNIST PNGs (28 px, as the sample) and a 512x600 photo, which prepare decodes in
    libjpeg's DCT domain at 1/4 scale, then resizes and encodes as JPEG."""
    sample = ROOT / "data" / "sample" / "target"
    pngs = [path for name in ("coat", "shirt") for path in sorted((sample / name).iterdir())[:3]]
    return [*pngs, ROOT / "benchmarks" / "photos" / "grace_hopper.jpg"]


def prepare(out: Path) -> dict:
    """prepare's decode, resize and JPEG encode of each input (its own function), into OUT/prepared/<c>/."""
    from imgcls.data.decoding import decode_one

    found = {}
    for index, path in enumerate(inputs()):
        staging = out / "prepared" / ("a" if index % 2 else "b")
        staging.mkdir(parents=True, exist_ok=True)
        made = decode_one(path, staging, 48, 8, "jpeg", 95)
        found[path.name] = f"{made['pixels_sha256'][:16]} {made['file_sha256'][:16]}"
    return found


def loader(train_set) -> dict:
    """The train loader's decode, random resized crop and flip (seeded per image), and the eval crop."""
    from imgcls.data.datasets import read_image
    from imgcls.data.transforms import eval_crop, preprocessing_spec

    batches = [images for images, _ in make_train_loader(train_set, epoch=1)]
    evaluated = [eval_crop(preprocessing_spec(CROP))(read_image(path)) for path, _ in train_set.samples]
    return {"train_batches": sha(*batches), "eval_crops": sha(*evaluated)}


def make_train_loader(train_set, epoch: int):
    from imgcls.data.loaders import make_loader

    loader = make_loader(train_set, 2, True, 0, seed=7)
    loader.sampler.set_epoch(epoch)
    return loader


def train_step(arch: str, train_set) -> tuple[torch.nn.Module, str]:
    """An epoch of the training loop from a seeded init: two steps of forward, backward, fused AdamW and the
    scheduler (5 of the images in batches of 2, the last one dropped): the second step uses AdamW's state."""
    from imgcls.engine.loop import train_one_epoch
    from imgcls.engine.recipe import make_optimizer, make_scheduler
    from imgcls.model.networks import build_model

    torch.manual_seed(0)
    model = build_model(arch, 2).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.05, 0.9)
    scheduler = make_scheduler(optimizer, 0, 10)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    cpu, five = torch.device("cpu"), Subset(train_set, range(5))
    train_one_epoch(
        model, make_train_loader(five, 1), loss_fn, optimizer, scheduler, cpu, log_every=10**9,
        memory_format=torch.channels_last,
    )  # fmt: skip
    return model, sha(*model.state_dict().values())


def evaluate(model, eval_set) -> dict:
    """Test logits, the evaluate stage's figures (scores, bootstrap intervals, temperature, ECE), Grad-CAM."""
    from imgcls.config.params import load_params
    from imgcls.data.loaders import make_loader
    from imgcls.engine.inference import collect_logits
    from imgcls.evaluation.metrics import assess
    from imgcls.evaluation.saliency import grad_cam

    cpu = torch.device("cpu")
    logits, targets = collect_logits(model, make_loader(eval_set, 4, False, 0, 0), cpu, torch.channels_last)
    cfg = load_params(ROOT / "params.yaml").evaluate
    metrics, _, calibration = assess(logits, targets, (logits, targets), ["a", "b"], cfg)
    images = torch.stack([eval_set[i][0] for i in range(len(eval_set))]).float() / 255
    maps = grad_cam(model, "resnet18", images.contiguous(memory_format=torch.channels_last), targets)
    figures = {k: v for k, v in metrics.items() if k.startswith(("test_", "temperature", "ece"))}
    return {"logits": sha(logits), "grad_cam": sha(maps), "bins": sha(json.dumps(calibration).encode())} | {
        k: repr(v) for k, v in sorted(figures.items())
    }


def write_export(model, out: Path, formats: tuple[str, ...]) -> dict:
    """The export stage's files of `model`: the .pt2 program (BatchNorm folded into its convolutions, which
    computes new weights) and the ONNX graph."""
    from imgcls.export.formats import export_onnx, export_program

    example = torch.zeros(2, 3, CROP, CROP)
    if "pt2" in formats:
        export_program(model, example, out / "model.pt2")
    if "onnx" in formats:
        export_onnx(model, example, out / "model.onnx", 18)
    return {f"model.{name}": sha((out / f"model.{name}").read_bytes()) for name in formats}


def export_parity(model, eval_set, out: Path) -> dict:
    """The export stage's parity check of each runtime against the eager model, on this CPU."""
    from imgcls.export.formats import compare, load_runtime

    images = torch.stack([eval_set[i][0] for i in range(len(eval_set))]).float() / 255
    with torch.no_grad():
        expected = model.eval()(images.contiguous(memory_format=torch.channels_last)).numpy()
    found = {}
    for name in ("torch", "onnx"):
        logits = load_runtime(out, name)(images.numpy())
        found[name] = {"logits": sha(logits.tobytes())} | compare(expected, logits, 1e-4)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["pinned", "unpinned"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--archs", default="resnet18")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    parts, seconds, clock = args.parts.split(","), {}, time.perf_counter()
    try:
        runtime.pin(args.mode == "pinned", args.threads, torch.device("cpu"))
    except runtime.RuntimeNotPinned as refused:
        print(f"RuntimeNotPinned: {refused}", file=sys.stderr)
        sys.exit(3)
    from imgcls.data.datasets import image_folder, read_image
    from imgcls.data.transforms import eval_crop, preprocessing_spec, train_transform
    from imgcls.engine.fingerprint import fingerprint

    machine = fingerprint(torch.device("cpu"), args.mode == "pinned")
    found: dict = {"cpu": {k: machine[k] for k in ("pinned", "kernel_isa", "onednn_isa", "blas", "threads")}}

    def timed(name: str, work, *arguments):
        nonlocal clock
        result = work(*arguments)
        seconds[name], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        return result

    if "prepare" in parts:
        found["prepared"] = timed("prepare", prepare, args.out)
    train_set = image_folder(str(args.out / "prepared"), train_transform(CROP, 0.35, True), read_image)
    eval_set = image_folder(str(args.out / "prepared"), eval_crop(preprocessing_spec(CROP)), read_image)
    if "loader" in parts:
        found["loader"] = timed("loader", loader, train_set)
    trained = {}
    for arch in args.archs.split(",") if "train" in parts else []:
        trained[arch], found[f"step.{arch}"] = timed(arch, train_step, arch, train_set)
    if "resnet18" in trained and "evaluate" in parts:
        found["evaluation"] = timed("evaluate", evaluate, trained["resnet18"], eval_set)
    if "resnet18" in trained and "write_export" in parts:  # both files
        both = ("pt2", "onnx")
        found["files"] = timed("write_export", write_export, trained["resnet18"], args.out, both)
    elif "resnet18" in trained and "write_program" in parts:  # the .pt2 alone (ONNX: a minute under qemu)
        program = args.out / "program"
        program.mkdir(exist_ok=True)
        found["files"] = timed("write_program", write_export, trained["resnet18"], program, ("pt2",))
    if "resnet18" in trained and "export" in parts:
        found["parity"] = timed("export", export_parity, trained["resnet18"], eval_set, args.out)
    found["seconds"] = seconds
    print(json.dumps(found))


if __name__ == "__main__":
    main()
