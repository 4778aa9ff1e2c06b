"""The entry point every stage shares: load params.yaml once, run, and turn failures into one clear line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from stages.params import Params, load_params

log = logging.getLogger("stage")
# Failures a user can fix (bad params, data, paths, weights, unreachable store): their message says how.
USER_ERRORS = (ValueError, OSError, RuntimeError)


def stage_main(run: Callable[[Params], dict]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        run(load_params())
    except USER_ERRORS as error:
        if os.environ.get("PIPELINE_TRACEBACK"):
            raise
        log.error("%s: %s", type(error).__name__, worker_message(str(error)))
        log.error("(set PIPELINE_TRACEBACK=1 to see the traceback)")
        sys.exit(1)


def worker_message(message: str) -> str:
    """A DataLoader worker's error arrives wrapped in its traceback: keep the original message."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
