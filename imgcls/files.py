"""Files: writing what the stages produce, hashing files, and file names as text.

Writes are atomic (a temporary file or folder, then a rename), so a kill, a full disk or a failure half-way
never leaves a truncated file or a half-written folder behind, and the previous output stays until the new one
is whole; JSON that is always valid (no NaN or Infinity).

Temporary names are `.<name>.partial-<pid>` beside the output (ignored by git)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` only when the block succeeds."""
    path = Path(path)
    # the suffix some savers check
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot write {path}: {error.strerror or error}. Free space or fix "
            "permissions, then run the stage again",
        ) from error
    finally:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # nothing was made there
            temporary.unlink()


@contextmanager
def replace_folder(path: str | Path) -> Iterator[Path]:
    """A new, empty folder to fill; it replaces `path` (whose old contents are then deleted) only when the
    block succeeds. On any failure the new folder is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new, old = (path.with_name(f".{path.name}.partial-{os.getpid()}{kind}") for kind in ("", "-old"))
    for leftover in (new, old):  # from a process of the same pid that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    new.mkdir()
    try:
        yield new
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(new, path)
        except OSError:
            if old.exists():
                os.replace(old, path)  # put the previous output back
            raise
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_figure(path: str | Path, figure) -> Path:
    """A matplotlib figure as PNG, without the library version in its metadata (the bytes depend on the plot
    only).
    """
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, metadata={"Software": None})
    return Path(path)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data) -> None:
    """Valid JSON or an error naming the first value that is not finite."""
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"{path}: refusing to write a value that is not finite (NaN or infinity): "
            f"{_first_non_finite(data)}"
        ) from None
    write_text(path, text + "\n")


def _first_non_finite(data, prefix: str = "") -> str:
    if isinstance(data, dict):
        found = (_first_non_finite(v, f"{prefix}{k}.") for k, v in data.items())
    elif isinstance(data, list | tuple):
        found = (_first_non_finite(v, f"{prefix}{i}.") for i, v in enumerate(data))
    else:
        return f"{prefix.rstrip('.')} = {data}" if isinstance(data, float) and not math.isfinite(data) else ""
    return next((f for f in found if f), "")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def write_csv(path: str | Path, fields: list[str], rows: list[dict], spreadsheet: bool = False) -> None:
    """Rows as dicts; keys not in `fields` are left out. `spreadsheet`: a file people open in a spreadsheet,
    whose text cells (file and class names from users' folders) must not start a formula: those get a leading
    `'` (OWASP's advice for CSV injection)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    if spreadsheet:
        rows = [
            {k: f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_START) else v for k, v in row.items()}
            for row in rows
        ]
    writer.writerows(rows)
    with atomic_path(path) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8", newline="")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_serialized(path: str | Path, save: Callable[[io.BytesIO], None]) -> None:
    """Let a library serialize into memory (torch.save, torch.export.save), then write atomically: torch's own
    file writer aborts the whole process when the disk fills up."""
    buffer = io.BytesIO()
    save(buffer)
    write_bytes(path, buffer.getvalue())


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (which Python keeps as lone surrogates) become `\\xNN`,
    so the name can be written to CSV, JSON and logs and still shows the byte."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
