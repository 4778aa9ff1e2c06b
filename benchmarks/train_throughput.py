"""Benchmark: training images/s of the seed's loop, this pipeline's data path and step, the model-bound
ceiling, the loader alone, and frozen-backbone epochs on cached features. Needs only torch, torchvision and
PIL.

CPU:  PYTHONPATH=. python benchmarks/train_throughput.py GPU:  PYTHONPATH=. python
benchmarks/train_throughput.py --arch resnet50 --batch 256 --images 8192 --device cuda

It makes its own data: JPEG photos of about 500x375 (q90, 10 classes), cut and colour-shifted from photos that
installed packages ship (scikit-learn, matplotlib, scikit-image; else benchmarks/photos/), or from --photos
DIR. The prepared copy is what `prepare` writes (short side --prepared-size, JPEG --quality), and a PNG copy
to compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image, ImageEnhance
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms
from torchvision.models import get_model

from imgcls.data.datasets import DecodedImages, image_folder, read_image
from imgcls.data.images import resize_short_side, save_prepared
from imgcls.data.loaders import make_loader, worker_count
from imgcls.data.transforms import train_transform
from imgcls.engine import runtime
from imgcls.engine.features import FeatureViews, backbone_features, head_of
from imgcls.engine.loop import train_one_epoch
from imgcls.engine.recipe import make_optimizer, make_scheduler, seed_everything
from imgcls.model.networks import freeze_backbone

PACKAGE_PHOTOS = {
    "sklearn": ["datasets/images/china.jpg", "datasets/images/flower.jpg"],
    "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg"],
    "skimage": ["data/astronaut.png", "data/coffee.png", "data/chelsea.png", "data/rocket.jpg"],
}
SHIPPED = Path(__file__).parent / "photos"  # a public-domain photo, for machines whose packages ship none
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, from the data sheets
CLASSES = 10


def package_photos() -> list[Path]:
    """Photos shipped inside installed packages (found without importing them)."""
    found = []
    for package, files in PACKAGE_PHOTOS.items():
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            found += [p for f in files if (p := Path(spec.origin).parent / f).is_file()]
    return found


def make_photo(job: tuple[Path, int, Path, Path, Path, int, int]) -> None:
    """One ~500x375 JPEG (a random cut of a source photo, colour-shifted) plus its prepared JPEG and PNG."""
    source, index, originals, prepared, png, prepared_size, quality = job
    rng = random.Random(index)
    with Image.open(source) as image:
        image = image.convert("RGB")
    width, height = image.size
    scale = rng.uniform(0.45, 1.0)
    cut_w, cut_h = int(width * scale), int(height * scale)
    left, top = rng.randint(0, width - cut_w), rng.randint(0, height - cut_h)
    size = (500, 375) if rng.random() < 0.7 else (375, 500)
    photo = image.crop((left, top, left + cut_w, top + cut_h)).resize(size, Image.Resampling.BICUBIC)
    photo = ImageEnhance.Color(ImageEnhance.Brightness(photo).enhance(rng.uniform(0.7, 1.3))).enhance(
        rng.uniform(0.6, 1.4)
    )
    name = f"c{index % CLASSES}/img{index:06d}"
    for folder in (originals, prepared, png):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
    photo.save(originals / f"{name}.jpg", quality=90)
    small = resize_short_side(photo, prepared_size)
    save_prepared(small, prepared / f"{name}.jpg", "jpeg", quality)
    save_prepared(small, png / f"{name}.png", "png", 0)


def make_data(
    root: Path, photos: list[Path], images: int, prepared_size: int, quality: int
) -> dict[str, Path]:
    folders = {name: root / name for name in ("originals", "prepared", "prepared_png")}
    jobs = [(photos[i % len(photos)], i, *folders.values(), prepared_size, quality) for i in range(images)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(make_photo, jobs, chunksize=16))
    return folders


def folder_kb(folder: Path) -> float:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / len(files) / 1024


def seed_loader(originals: Path, size: int, batch: int) -> DataLoader:
    """The seed's data path: PIL from the original JPEGs every epoch, float32 from the worker, one process."""
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    return DataLoader(
        datasets.ImageFolder(str(originals), transform),
        batch_size=batch,
        shuffle=True,
        num_workers=0,
        drop_last=True,
    )


def seed_epoch(model: nn.Module, loader, device: torch.device) -> int:
    """The seed's step as written: fp32, NCHW, Adam, the loss and accuracy read back every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn, seen, correct, total = nn.CrossEntropyLoss(), 0, 0, 0.0
    model.train()
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    return seen


def timed(device: torch.device, work) -> tuple[float, float]:
    """(seconds, peak memory in MiB: CUDA allocated, or this process's max RSS on the CPU) of `work()`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**20
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pipeline_step(model, loader, device, layout) -> tuple[float, float]:
    """This pipeline's step (`train_one_epoch`: bf16 autocast on CUDA, on-device normalisation, no per-step
    sync, fused AdamW) over `loader`; returns the seconds of a warm-up epoch and of the next one."""
    optimizer = make_optimizer(model, "adamw", 1e-4, 0.05, 0.9)
    scheduler = make_scheduler(optimizer, 0, 10 * len(loader))
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        train_one_epoch(
            model, loader, loss_fn, optimizer, scheduler, device, memory_format=layout, log_every=10**9
        )

    return timed(device, epoch)[0], timed(device, epoch)[0]


def train_flops(arch: str, size: int, device: torch.device) -> float:
    """FLOPs (2 per multiply-accumulate) of one training image: forward and backward."""
    model = get_model(arch, num_classes=CLASSES).to(device)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, size, size, device=device)).sum().backward()
    return counter.get_total_flops() / 2


def one_thread(work):
    """`work()` on one intra-op thread, as in a loader worker: what one core does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return work()
    finally:
        torch.set_num_threads(threads)


def loader_rate(dataset, batch: int, workers: int, epochs: int = 3) -> float:
    """Images/s of a pipeline loader alone (uint8 batches): the median of `epochs` epochs after a first one
    (worker start, caches) that is not counted. Without workers, on one thread: images/s per core."""

    def measure() -> float:
        loader = make_loader(dataset, batch, True, workers, 0)
        for _ in loader:
            pass
        rates = []
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch + 1)
            start = time.perf_counter()
            rates.append(sum(len(targets) for _, targets in loader) / (time.perf_counter() - start))
        return statistics.median(rates)

    return measure() if workers else one_thread(measure)


def seed_loader_rate(originals: Path, size: int, batch: int) -> float:
    """Images/s per core of the seed's loader (one epoch, one thread)."""

    def measure() -> float:
        loader = seed_loader(originals, size, batch)
        start = time.perf_counter()
        seen = sum(len(targets) for _, targets in loader)
        return seen / (time.perf_counter() - start)

    return one_thread(measure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="crop size (px)")
    parser.add_argument("--prepared-size", type=int, default=0, help="prepared short side; 0: size * 256/224")
    parser.add_argument(
        "--quality", type=int, default=95, help="prepared JPEG quality (params.yaml's default)"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument(
        "--workers", type=int, default=-1, help="loader processes; -1: the pipeline's default"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: torch's default")
    parser.add_argument("--pinned", action="store_true", help="the pinned reproducible runtime (CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the pipeline's model")
    parser.add_argument("--photos", type=Path, help="a folder of photos to cut the data from")
    parser.add_argument("--skip-seed", action="store_true", help="leave out the seed's loop (slow on CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    device = runtime.resolve_device(args.device)
    runtime.pin(args.pinned, args.threads, device)  # on CUDA without --pinned: cudnn.benchmark on
    seed_everything(0)
    workers = worker_count(args.workers)
    prepared_size = args.prepared_size or round(args.size * 256 / 224)
    photos = (
        sorted(args.photos.glob("*.jpg"))
        if args.photos
        else package_photos() or sorted(SHIPPED.glob("*.jpg"))
    )
    if not photos:
        raise SystemExit(
            f"no source photos in {args.photos or SHIPPED}: pass --photos DIR (a folder of JPEGs)"
        )
    layout = torch.channels_last
    figures: dict = {
        "arch": args.arch,
        "size": args.size,
        "prepared_size": prepared_size,
        "quality": args.quality,
        "batch": args.batch,
        "images": args.images,
        "workers": workers,
        "device": str(device),
        "pinned": args.pinned,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "cpu": runtime.cpu_model(),
        "photos": [p.name for p in photos],
    }
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        folders = make_data(Path(scratch), photos, args.images, prepared_size, args.quality)
        figures["data_s"] = time.perf_counter() - start
        figures["kb_per_image"] = {name: folder_kb(folder) for name, folder in folders.items()}
        train_set = image_folder(str(folders["prepared"]), train_transform(args.size, 0.08, True), read_image)
        png_set = image_folder(
            str(folders["prepared_png"]), train_transform(args.size, 0.08, True), read_image
        )

        # the loader alone: one process (per core), then the workers
        figures["loader_per_core"] = {
            "seed_pil_originals_float32": seed_loader_rate(folders["originals"], args.size, args.batch),
            "prepared_png_uint8": loader_rate(png_set, args.batch, 0),
            "prepared_jpeg_uint8": loader_rate(train_set, args.batch, 0),
        }
        start = time.perf_counter()
        decoded = DecodedImages(train_set, workers)
        figures["ram_cache"] = {"decode_s": time.perf_counter() - start, "mib": decoded.nbytes / 2**20}
        figures["loader_per_core"]["ram_cache_uint8"] = loader_rate(decoded, args.batch, 0)
        del decoded
        if workers:
            rate = loader_rate(train_set, args.batch, workers)
            figures["loader_workers"] = {"images_per_s": rate, "per_worker": rate / workers}

        # the model-bound ceiling: the same step on uint8 batches already on the device
        model = get_model(args.arch, num_classes=CLASSES).to(device, memory_format=layout)
        step_model = torch.compile(model) if args.compile else model
        synthetic = [
            (
                torch.randint(
                    0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device
                ),
                torch.randint(0, CLASSES, (args.batch,), device=device),
            )
            for _ in range(max(2, args.images // args.batch))
        ]
        warmup, seconds = pipeline_step(step_model, synthetic, device, layout)
        figures["ceiling"] = len(synthetic) * args.batch / seconds
        figures["first_epoch_extra_s"] = warmup - seconds  # with --compile: the compilation
        figures["ceiling_peak_mib"] = timed(device, lambda: None)[1]

        # the pipeline: prepared JPEGs -> workers -> uint8 batches -> the same step
        loader = make_loader(train_set, args.batch, True, workers, 0)
        seconds, peak = timed(
            device,
            lambda: figures.__setitem__(
                "pipeline_epoch_s", pipeline_step(step_model, loader, device, layout)[1]
            ),
        )
        figures["pipeline"] = len(loader) * args.batch / figures["pipeline_epoch_s"]
        figures["pipeline_peak_mib"] = peak

        # frozen backbone: the backbone once per image and flip, then epochs of the head alone
        freeze_backbone(model, args.arch)
        cache_loader = make_loader(
            image_folder(str(folders["prepared"]), train_transform(args.size, 1.0, False), read_image),
            args.batch,
            False,
            workers,
            0,
        )
        first_s, _ = timed(
            device,
            lambda: figures.__setitem__(
                "features", backbone_features(model, args.arch, cache_loader, device, True, layout)
            ),
        )
        views, targets = figures.pop("features")
        head = head_of(model, args.arch)
        head_loader = make_loader(FeatureViews(views, targets), args.batch, True, 0, 0)
        head_s = pipeline_step(head, head_loader, device, torch.contiguous_format)[1]
        figures["frozen"] = {
            "first_epoch_s": first_s,
            "cached_epoch_s": head_s,
            "full_over_cached": figures["pipeline_epoch_s"] / head_s,
        }

        if not args.skip_seed:
            seed_model = get_model(args.arch, num_classes=CLASSES).to(device)
            loader = seed_loader(folders["originals"], args.size, 32)
            seen = seed_epoch(seed_model, [next(iter(loader))], device)  # warm-up step
            seconds, peak = timed(
                device, lambda: figures.__setitem__("seed_seen", seed_epoch(seed_model, loader, device))
            )
            figures["seed"] = figures.pop("seed_seen") / seconds
            figures["seed_peak_mib"] = peak
            del seen
    report(figures, args, device)


def report(figures: dict, args, device: torch.device) -> None:
    flops = train_flops(args.arch, args.size, device)
    figures["gflop_per_train_image"] = flops / 1e9
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if figures["gpu"] and k in figures["gpu"]), None)
    print(
        f"{args.arch} at {args.size} px, batch {args.batch}, {args.images} images, {figures['workers']} "
        "workers, "
        f"{figures['device']} ({figures['gpu'] or figures['cpu']}), {figures['threads']} threads, "
        f"{'pinned' if args.pinned else 'unpinned'}{', compiled' if args.compile else ''}"
    )
    print(
        f"data: {figures['data_s']:.1f} s to make; prepared JPEG quality {args.quality}; KB per image: "
        + ", ".join(f"{k} {v:.1f}" for k, v in figures["kb_per_image"].items())
    )
    print(
        "loader, one process on one thread (img/s per core, median of 3 epochs): "
        + ", ".join(f"{k} {v:.0f}" for k, v in figures["loader_per_core"].items())
    )
    print(
        f"RAM cache (train.cache_images): {figures['ram_cache']['mib']:.0f} MiB, decoded in "
        f"{figures['ram_cache']['decode_s']:.1f} s"
    )
    if args.compile:
        print(
            f"torch.compile: the first epoch took {figures['first_epoch_extra_s']:.1f} s longer (compilation)"
        )
    if "loader_workers" in figures:
        print(
            f"loader, {figures['workers']} workers: {figures['loader_workers']['images_per_s']:.0f} img/s "
            f"({figures['loader_workers']['per_worker']:.0f} per worker)"
        )
    rows = [
        (
            "seed's loop (PIL originals, fp32, Adam, batch 32, 1 process)",
            figures.get("seed"),
            figures.get("seed_peak_mib"),
        ),
        (
            "pipeline (prepared JPEG, workers, uint8, train_one_epoch)",
            figures["pipeline"],
            figures["pipeline_peak_mib"],
        ),
        (
            "model-bound ceiling (uint8 batches on the device)",
            figures["ceiling"],
            figures["ceiling_peak_mib"],
        ),
    ]
    for name, rate, memory in rows:
        if rate is None:
            continue
        tflops = rate * flops / 1e12
        share = f", {100 * tflops / peak:.1f}% of bf16 peak {peak:.0f}" if peak else ""
        print(f"{name:<66} {rate:9.1f} img/s  {tflops:7.3f} TFLOP/s{share}  peak {memory:,.0f} MiB")
    print(f"pipeline / ceiling: {figures['pipeline'] / figures['ceiling']:.3f}")
    if figures.get("seed"):
        print(f"pipeline / seed: {figures['pipeline'] / figures['seed']:.2f}x")
    frozen = figures["frozen"]
    print(
        f"frozen backbone: first epoch (features, 2 views) {frozen['first_epoch_s']:.2f} s, cached epoch "
        f"{frozen['cached_epoch_s']:.4f} s; a full fine-tuning epoch costs {frozen['full_over_cached']:.0f}x "
        "a cached one"
    )
    print(f"FLOPs per training image: {flops / 1e9:.2f} GFLOP (2 per multiply-accumulate)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
