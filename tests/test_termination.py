"""SIGTERM is raised where the process is, but never inside a store write: there it waits for the write."""

from __future__ import annotations

import os
import signal

import pytest

from imgcls.termination import Terminated, on_signal, uninterrupted


def test_a_sigterm_inside_a_store_write_is_raised_when_the_write_ends():
    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        finished = []
        with pytest.raises(Terminated, match="stopped by signal 15"):
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                with uninterrupted():  # nested: still the outer block's end
                    finished.append("inner")
                finished.append("outer")
        assert finished == ["inner", "outer"]
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # outside a write: at once
            signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
    finally:
        signal.signal(signal.SIGTERM, previous)
