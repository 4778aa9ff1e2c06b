"""Camera photos in `prepare`: a 12-megapixel JPEG decoded in full and resized, against the same photo decoded
in libjpeg's DCT domain (the smallest scale that leaves the short side at least twice the target) and then
resized, as prepare does now. The photos are made from real ones (scikit-learn's and matplotlib's sample
photos, upscaled to 4032x3024 with sensor-like noise, saved as JPEG q92 like a phone's). Prints figures per
photo on one core, how far the prepared pixels move, and that a re-saved copy is still the same picture.

Usage: python benchmarks/camera_photos.py [--size 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import time

import numpy as np
from PIL import Image

from imgcls.data.images import decode_image, resize_short_side

SIDE = (4032, 3024)  # 12 MP, a phone's


def real_photos() -> list[Image.Image]:
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        photos.append(Image.open(file).convert("RGB"))
    return photos


def camera_jpeg(photo: Image.Image, seed: int) -> bytes:
    large = np.asarray(photo.resize(SIDE, Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = large + np.random.default_rng(seed).normal(0, 5, large.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def resaved(data: bytes) -> bytes:
    """The same compressed picture with other metadata: a comment segment after the start of image."""
    return data[:2] + b"\xff\xfe\x00\x10re-saved copy!" + data[2:]


def prepared(data: bytes, size: int, dct: bool) -> Image.Image:
    image = decode_image(data, shrink_to=size if dct else None, jpeg_only=True)
    return resize_short_side(image, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="prepare.image_size")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()  # PIL decodes and resizes on one core, as a prepare worker does
    photos = [camera_jpeg(photo, seed) for seed, photo in enumerate(real_photos())]
    times = {"full": [], "dct": []}
    for _ in range(args.rounds):
        for data in photos:
            for mode in times:
                start = time.perf_counter()
                prepared(data, args.size, mode == "dct")
                times[mode].append(time.perf_counter() - start)
    full, dct = (statistics.median(times[mode]) * 1000 for mode in ("full", "dct"))
    mb = statistics.mean(len(data) for data in photos) / 2**20
    print(
        f"{len(photos)} photos {SIDE[0]}x{SIDE[1]}, JPEG q92, {mb:.1f} MB each -> short side {args.size} px"
    )
    print(f"  decoded in full, then resized:   {full:7.1f} ms a photo ({1000 / full:5.1f} photos/s per core)")
    print(f"  DCT-scaled decode, then resized: {dct:7.1f} ms a photo ({1000 / dct:5.1f} photos/s per core)")
    print(f"  x{full / dct:.1f} faster (median of {args.rounds} rounds, interleaved)")
    differences = []
    for data in photos:
        a = np.asarray(prepared(data, args.size, False), dtype=np.int16)
        b = np.asarray(prepared(data, args.size, True), dtype=np.int16)
        differences.append(np.abs(a - b))
    every = np.concatenate([d.ravel() for d in differences])
    print(
        f"  prepared pixels, DCT-scaled against full decode: mean |difference| {every.mean():.2f} levels, "
        f"99th percentile {np.percentile(every, 99):.0f}, max {every.max()}"
    )

    def key(data: bytes) -> str:  # what deduplication compares (imgcls.data.decoding.decode_one)
        image = decode_image(data, shrink_to=args.size, jpeg_only=True)
        return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()

    same = all(key(data) == key(resaved(data)) for data in photos)
    print(f"  a re-saved copy (other metadata) is the same picture to deduplication: {same}")


if __name__ == "__main__":
    main()
