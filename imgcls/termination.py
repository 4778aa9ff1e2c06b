"""SIGTERM as an exception raised where the process is, so cleanups run and the MLflow run is marked KILLED;
except inside a store write (`uninterrupted`), where it waits for the write to end: a sqlite write cut in half
leaves the database locked by this very process, and the run could then not be marked at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is."""


_depth = 0  # nesting of `uninterrupted` blocks
_pending: int | None = None  # a signal that arrived inside one


def on_signal(signum, frame) -> None:
    """The SIGTERM handler a stage installs."""
    global _pending
    if _depth:
        _pending = signum
        return
    raise Terminated(f"stopped by signal {signum}")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A block SIGTERM does not cut: a signal arriving inside it is raised when it ends."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise Terminated(f"stopped by signal {signum}")
