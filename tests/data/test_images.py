"""Decoding one input file: large JPEGs decoded in libjpeg's DCT domain for prepare, with their full upright
size kept, held to prepare.min_size by that size, and a re-saved copy still the same picture."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from imgcls.data.decoding import decode_one
from imgcls.data.images import decode_image, resize_short_side


def photo(width: int, height: int, image_format: str = "JPEG", orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    pixels = np.clip(ramp + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    image, buffer = Image.fromarray(pixels), io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, image_format, **({"quality": 90, "exif": exif} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def pixels_key(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()


def test_a_large_jpeg_is_decoded_at_the_smallest_scale_that_keeps_twice_the_target():
    image = decode_image(photo(2048, 1536), shrink_to=64, jpeg_only=True)
    assert image.info["decoded_at"] == 1 / 8 and image.size == (
        256,
        192,
    )  # 192 >= 2 x 64; 1/16 does not exist
    assert image.info["full_size"] == (2048, 1536)
    image = decode_image(photo(2048, 1536), shrink_to=200, jpeg_only=True)
    assert image.info["decoded_at"] == 1 / 2 and image.size == (1024, 768)  # 1/4 would leave 384 < 400
    assert decode_image(photo(2048, 1536), shrink_to=None).info["decoded_at"] == 1.0


def test_other_formats_are_decoded_in_full_for_prepare():
    image = decode_image(photo(1024, 768, "PNG"), shrink_to=64, jpeg_only=True)
    assert image.size == (1024, 768) and image.info["decoded_at"] == 1.0


def test_a_turned_photo_keeps_its_upright_full_size():
    image = decode_image(photo(2048, 1536, orientation=6), shrink_to=64, jpeg_only=True)
    assert image.size == (192, 256) and image.info["full_size"] == (1536, 2048)


def test_min_size_is_held_against_the_whole_picture_not_the_scaled_decode():
    assert decode_image(photo(2048, 1536), min_size=1000, shrink_to=64, jpeg_only=True).size == (256, 192)
    with pytest.raises(Exception, match="too small: 2048x1536 px"):
        decode_image(photo(2048, 1536), min_size=1600, shrink_to=64, jpeg_only=True)


def test_prepared_pixels_stay_close_to_a_full_decode_and_a_resaved_copy_is_the_same_picture():
    data = photo(2048, 1536)
    full = np.asarray(resize_short_side(decode_image(data), 64), dtype=np.int16)
    scaled = np.asarray(
        resize_short_side(decode_image(data, shrink_to=64, jpeg_only=True), 64), dtype=np.int16
    )
    assert full.shape == scaled.shape and 0 < np.abs(full - scaled).mean() < 2  # not the same path, nearly
    resaved = data[:2] + b"\xff\xfe\x00\x0ecopy, again!" + data[2:]  # a comment segment: other bytes
    assert pixels_key(decode_image(resaved, shrink_to=64, jpeg_only=True)) == pixels_key(
        decode_image(data, shrink_to=64, jpeg_only=True)
    )


def test_the_manifest_records_the_full_size_of_a_scaled_photo(tmp_path):
    source = tmp_path / "IMG_0001.JPG"
    source.write_bytes(photo(2048, 1536))
    (tmp_path / "staging").mkdir()
    found = decode_one(source, tmp_path / "staging", 64, 8, "jpeg", 95)
    assert (found["width"], found["height"]) == (2048, 1536)
    with Image.open(next((tmp_path / "staging").iterdir())) as staged:
        assert min(staged.size) == 64
