"""Rebuild data/sample/ from the four original Fashion-MNIST files (not needed at run time).

Usage: python data/sample/build_sample.py <folder with the *-ubyte.gz files> [<output folder>]

- source/: all 10 classes from the training file, for `pretrain.source: dataset` (the stand-in for ImageNet:
           a large labelled set from the same domain);
- target/: the 4 tops, few images each, from the training file: train and val;
- test/:   the same 4 classes from Fashion-MNIST's own test file, the fixed test set (`prepare.test_data`).
No image is in two sets: source and target draw disjoint training-file indices, test comes from the test
file. Selection is seeded: a rebuild gives the same files.
"""

import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
# The four tops look alike: a hard task where a pretrained backbone can matter.
TARGET = ["t-shirt_top", "pullover", "coat", "shirt"]
SOURCE_PER_CLASS = 500
TARGET_PER_CLASS = 25  # few labelled images (20 train, 5 val): where starting weights matter
TEST_PER_CLASS = 600  # 2,400 test images: the accuracy's 95% interval is about ±1.8 points
SEED = 0


def read_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N) from one original file pair."""
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def write_set(
    out: Path, images, labels, classes: list[str], per_class: int, prefix: str, taken: set[int] | None = None
) -> set[int]:
    """Write `per_class` seeded-random images of each class (none of `taken`) as PNGs under out/<class>/;
    returns the indices written."""
    rng, written = np.random.default_rng(SEED), set()
    for name in classes:
        index = np.array(
            [i for i in np.flatnonzero(labels == CLASS_NAMES.index(name)) if i not in (taken or ())]
        )
        chosen = np.sort(rng.choice(index, size=per_class, replace=False))
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in chosen:
            Image.fromarray(images[i], mode="L").save(out / name / f"{prefix}-{i:05d}.png", optimize=True)
        written |= set(chosen.tolist())
    return written


def main() -> None:
    folder = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent
    train = read_split(folder, "train")
    target = write_set(out / "target", *train, TARGET, TARGET_PER_CLASS, "train")
    write_set(out / "source", *train, CLASS_NAMES, SOURCE_PER_CLASS, "train", taken=target)
    write_set(out / "test", *read_split(folder, "t10k"), TARGET, TEST_PER_CLASS, "t10k")


if __name__ == "__main__":
    main()
