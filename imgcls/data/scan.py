"""Read a user's ImageFolder: every file, with its class or the reason it is left out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imgcls.files import printable

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})


@dataclass(frozen=True)
class Candidate:
    """An input file that looks like an image of class `label`; `source` is relative to the root."""

    path: Path
    source: str
    label: str


@dataclass(frozen=True)
class Excluded:
    """An input file left out: `kind` is a short code (counted in metrics), `reason` says why."""

    source: str
    label: str
    kind: str
    reason: str


class BadClassName(ValueError):
    """A class folder whose name cannot be a class name."""


def scan(root: Path, follow_symlinks: bool) -> tuple[list[Candidate], list[Excluded], list[str]]:
    """Every file under `root` as a candidate image or an exclusion with its reason, plus the class
    folder names (empty ones too). Sub-folders inside a class folder are read recursively."""
    root = root.absolute()
    candidates: list[Candidate] = []
    excluded: list[Excluded] = []
    classes: list[str] = []
    real_root = root.resolve()
    seen_dirs = {real_root}
    stack = [(root, "")]
    while stack:
        folder, label = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            source = printable(path.relative_to(root).as_posix())
            problem = _link_problem(path, real_root, follow_symlinks) if entry.is_symlink() else None
            if problem:
                excluded.append(Excluded(source, label, *problem))
            elif entry.is_dir():
                if entry.name.startswith("."):
                    excluded += _all_files(
                        path,
                        root,
                        label,
                        "hidden_folder",
                        f"inside hidden folder '"
                        f"{printable(entry.name)}' (rename it without the leading dot to use it)",
                    )
                elif path.resolve() in seen_dirs:
                    excluded.append(
                        Excluded(
                            source,
                            label,
                            "symlink_loop",
                            "folder link to a folder already read (a cycle or a second path)",
                        )
                    )
                else:
                    if not label and printable(entry.name) != entry.name:
                        raise BadClassName(
                            f"class folder '{printable(entry.name)}' in {printable(str(root))} has a name "
                            "that is not "
                            "UTF-8 text: a class name goes into labels, CSV files and MLflow. Rename it "
                            "(e.g. "
                            "`convmv -f latin1 -t utf8 --notest -r <folder>`, or by hand)"
                        )
                    seen_dirs.add(path.resolve())
                    stack.append((path, label or entry.name))
                    if not label:
                        classes.append(entry.name)
            else:
                problem = _file_problem(entry.name, label)
                if problem:
                    excluded.append(Excluded(source, label, *problem))
                else:
                    candidates.append(Candidate(path, source, label))
    candidates.sort(key=lambda c: c.source)
    excluded.sort(key=lambda e: e.source)
    return candidates, excluded, sorted(classes)


def _link_problem(path: Path, real_root: Path, follow_symlinks: bool) -> tuple[str, str] | None:
    if not path.exists():
        return "broken_symlink", "symlink whose target does not exist"
    if not follow_symlinks and not path.resolve().is_relative_to(real_root):
        return (
            "symlink_outside",
            f"symlink to {printable(str(path.resolve()))}, outside the data folder "
            "(set prepare.follow_symlinks: true to follow it)",
        )
    return None


def _file_problem(name: str, label: str) -> tuple[str, str] | None:
    if not label:
        return "outside_class_folder", "not inside a class folder (move it into <data>/<class>/)"
    if name.startswith("._"):
        return "hidden_file", "macOS AppleDouble metadata file"
    if name.startswith("."):
        return "hidden_file", "hidden file"
    if name.lower() in SYSTEM_FILES:
        return "hidden_file", "operating-system thumbnail/settings file"
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return "not_image", (
            f"not an image file extension ('{printable(suffix) or 'none'}'; "
            f"allowed: {' '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return None


def _all_files(folder: Path, root: Path, label: str, kind: str, reason: str) -> list[Excluded]:
    return [
        Excluded(printable((Path(d) / f).relative_to(root).as_posix()), label, kind, reason)
        for d, _, files in os.walk(folder)
        for f in files
    ]
