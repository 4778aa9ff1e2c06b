"""The entry point every stage shares: load params.yaml once, confine the stage to its outputs, set up torch,
run, and turn failures into one clear line."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from stages import layout
from stages.params import Params, load_params
from stages.repository import check_committed
from stages.workspace import check_outputs, one_stage_at_a_time

log = logging.getLogger("stage")
# Failures a user can fix (bad params, data, paths, weights, unreachable store): their message says how.
USER_ERRORS = (ValueError, OSError, RuntimeError)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so cleanups run and the MLflow run is marked KILLED."""


def _terminate(signum, frame) -> None:
    raise Terminated(f"stopped by signal {signum}")


def stage_main(run: Callable[[Params], dict], uses_torch: bool = True) -> None:
    """Run a stage as a process, from the repository root (where DVC runs it): params read and checked, the
    stage's outputs confined to what it declares, one stage at a time, a committed tree, and torch set up
    (runtime.pin) before the stage touches a tensor."""
    stage = run.__globals__["__spec__"].name.rsplit(".", 1)[-1]  # `python -m stages.train`: its module is __main__
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None  # a torchrun rank
    logging.basicConfig(level=logging.INFO if rank in (None, "0") else logging.WARNING,
                        format=f"%(asctime)s {'' if rank is None else f'[rank {rank}] '}%(name)s %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        params = load_params()
        root = Path.cwd()
        check_outputs(stage, root)  # before anything is deleted or written
        launched = "LOCAL_RANK" in os.environ  # a torchrun rank: its launcher holds the workspace
        with nullcontext() if launched else one_stage_at_a_time(stage, root):
            check_committed(params.export.allow_dirty, layout.all_outputs())  # before any work, not after it
            if uses_torch:
                from stages import runtime
                runtime.pin(params.runtime.reproducible, params.runtime.threads,
                            runtime.resolve_device(params.train.device))
            run(params)
    except USER_ERRORS as error:
        if os.environ.get("PIPELINE_TRACEBACK"):
            raise
        log.error("%s: %s", type(error).__name__, worker_message(str(error)))
        log.error("(set PIPELINE_TRACEBACK=1 to see the traceback)")
        sys.exit(1)
    except KeyboardInterrupt as stop:
        log.error("stopped (%s): outputs were not written; run the stage again", stop or "Ctrl-C")
        sys.exit(143 if isinstance(stop, Terminated) else 130)


def worker_message(message: str) -> str:
    """A DataLoader worker's error arrives wrapped in its traceback: keep the original message."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
