"""Writing the files the stages produce: atomically (a temporary file, then a rename), so a kill or a full
disk never leaves a truncated file behind, and JSON that is always valid (no NaN or Infinity)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix some savers check
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}. Free space or fix "
                                   "permissions, then run the stage again") from error
    finally:
        temporary.unlink(missing_ok=True)


def write_figure(path: str | Path, figure) -> Path:
    """A matplotlib figure as PNG, without the library version in its metadata (the bytes depend on the plot only)."""
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
        raise ValueError(f"{path}: refusing to write a value that is not finite (NaN or infinity): "
                         f"{_first_non_finite(data)}") from None
    write_text(path, text + "\n")


def _first_non_finite(data, prefix: str = "") -> str:
    if isinstance(data, dict):
        found = (_first_non_finite(v, f"{prefix}{k}.") for k, v in data.items())
    elif isinstance(data, list | tuple):
        found = (_first_non_finite(v, f"{prefix}{i}.") for i, v in enumerate(data))
    else:
        return f"{prefix.rstrip('.')} = {data}" if isinstance(data, float) and not math.isfinite(data) else ""
    return next((f for f in found if f), "")


def write_csv(path: str | Path, fields: list[str], rows: list[dict]) -> None:
    """Rows as dicts; keys not in `fields` are left out."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
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
