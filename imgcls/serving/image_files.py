"""The images predict is given: files and folders listed (every entry left out has its reason), read
without blocking on FIFOs or devices, decoded and preprocessed a file at a time."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch
from torch.utils.data import Dataset

from imgcls.data.images import BadImage, decode_image
from imgcls.data.transforms import eval_transform
from imgcls.files import printable

MAX_FILE_BYTES = 100 * 2**20  # larger files are not read (no camera picture comes near)


class ImageFiles(Dataset):
    """(index, preprocessed tensor or None, error message) per file."""

    def __init__(self, paths: list[Path], spec: dict):
        self.paths, self.transform, self.size = paths, eval_transform(spec), int(spec["resize_short_side"])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            data = read_regular_file(self.paths[index])
            return index, self.transform(decode_image(data, shrink_to=self.size)), ""
        except BadImage as error:
            return index, None, f"{error.kind}: {error}"
        except OSError as error:
            return index, None, f"unreadable: {printable(error.strerror or str(error))}"


def read_regular_file(path: Path) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES; a FIFO, device or socket is never read (opening without
    blocking, then checking what was opened, also catches a file swapped for one after it was listed)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(descriptor, "rb") as file:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not_a_file", "not a regular file (a FIFO, device or socket); not read")
        if info.st_size > MAX_FILE_BYTES:
            raise BadImage("too_large", f"{info.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
        return file.read(MAX_FILE_BYTES + 1)


def keep_errors(batch):
    """Collate that stacks the readable images and passes the failures through."""
    good = [(i, t) for i, t, _ in batch if t is not None]
    images = torch.stack([t for _, t in good]) if good else torch.empty(0)
    return [i for i, _ in good], images, [(i, e) for i, t, e in batch if t is None]


def list_images(inputs: list[Path]) -> tuple[list[Path], dict[Path, str]]:
    """(files to classify, {path: why it is not read}). Files are taken as given; folders are walked without
    following links to folders, and every entry that is not a file gets its reason, so none is skipped
    silently. A named input that does not exist or is not a file or folder stops everything (one line)."""
    paths, problems = [], {}
    for item in inputs:
        if item.is_dir():
            for folder, folders, files in os.walk(item):
                for name in sorted(folders):
                    if (Path(folder) / name).is_symlink():
                        problems[Path(folder) / name] = "symlink_folder: a link to a folder, not followed"
                for name in sorted(files):
                    path = Path(folder) / name
                    if path.is_file():
                        paths.append(path)
                    else:
                        problems[path] = (
                            "broken_symlink: the link's target does not exist"
                            if path.is_symlink() and not path.exists()
                            else "not_a_file: a FIFO, device or socket; not read"
                        )
                folders.sort()
        elif item.is_file():
            paths.append(item)
        elif item.is_symlink() and not item.exists():
            raise FileNotFoundError(f"{printable(str(item))} is a link to a file that does not exist")
        elif item.exists():
            raise ValueError(
                f"{printable(str(item))} is not a file or folder (a FIFO, device or socket); not read"
            )
        else:
            raise FileNotFoundError(f"{printable(str(item))} does not exist")
    return sorted(paths), problems
