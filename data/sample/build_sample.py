"""Rebuild data/sample/ from the four original Fashion-MNIST files (not needed at run time).

Usage: python data/sample/build_sample.py <folder with the *-ubyte.gz files>
The source set (6 classes) comes from the training file, the target set (4 classes) from
the test file, so no image is in both. Selection is seeded, so a rebuild gives the same files.
"""

import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ["t-shirt_top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
# The four tops look alike: a hard task where a pretrained backbone can matter.
TARGET = ["t-shirt_top", "pullover", "coat", "shirt"]
SOURCE = [name for name in CLASS_NAMES if name not in TARGET]
SOURCE_PER_CLASS = 1000
TARGET_PER_CLASS = 150
SEED = 0


def read_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N) from one original file pair."""
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def write_set(out: Path, images, labels, classes: list[str], per_class: int, prefix: str) -> None:
    """Write `per_class` seeded-random images of each class as PNGs under out/<class>/."""
    rng = np.random.default_rng(SEED)
    for name in classes:
        index = np.flatnonzero(labels == CLASS_NAMES.index(name))
        chosen = np.sort(rng.choice(index, size=per_class, replace=False))
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in chosen:
            Image.fromarray(images[i], mode="L").save(out / name / f"{prefix}-{i:05d}.png", optimize=True)


def main() -> None:
    folder = Path(sys.argv[1])
    here = Path(__file__).parent
    write_set(here / "source", *read_split(folder, "train"), SOURCE, SOURCE_PER_CLASS, "train")
    write_set(here / "target", *read_split(folder, "t10k"), TARGET, TARGET_PER_CLASS, "t10k")


if __name__ == "__main__":
    main()
