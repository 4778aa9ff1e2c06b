"""The entry point every stage shares: load params.yaml once, confine the stage to its outputs, set up torch,
build what every stage needs (its context), run it, and turn failures into one clear line."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls import termination
from imgcls.config import layout
from imgcls.config.params import Params, load_params
from imgcls.engine import launch
from imgcls.provenance.git import check_committed
from imgcls.workspace import check_outputs, one_stage_at_a_time

if TYPE_CHECKING:
    import torch

log = logging.getLogger("stage")
# Failures a user can fix (bad params, data, paths, weights, unreachable store): their message says how.
USER_ERRORS = (ValueError, OSError, RuntimeError)


@dataclass(frozen=True)
class StageContext:
    """What a stage needs besides its params, built once: the repository root and, for a stage that computes,
    the device and memory layout its tensors use (prepare computes nothing with torch)."""

    stage: str
    params: Params
    root: Path
    device: torch.device | None = None
    memory_format: Any = None  # torch.memory_format

    def write_fingerprint(self, device: torch.device | None = None) -> dict:
        """This process's machine fingerprint, written to metrics/environment/<stage>.json; returns it."""
        from imgcls.engine import fingerprint

        return fingerprint.write_fingerprint(
            self.stage, device or self.device, self.params.runtime.reproducible
        )


def build_context(
    stage: str, params: Params, root: Path | None = None, computes: bool = True
) -> StageContext:
    """The context of `stage` (tests build one too); torch is imported only for a stage that computes."""
    root = root or Path.cwd()
    if not computes:
        return StageContext(stage, params, root)
    from imgcls.engine import runtime

    return StageContext(
        stage,
        params,
        root,
        runtime.resolve_device(params.runtime.device),
        runtime.memory_format(params.runtime.channels_last),
    )


def stage_main(
    run: Callable[[StageContext], dict],
    computes: bool = True,
    launches: Callable[[Params], bool] | None = None,
) -> None:
    """Run a stage as a process from the repository root: params checked, outputs confined to what dvc.yaml
    declares, one stage at a time, a committed tree, and torch set up (runtime.pin) before the stage touches
    a tensor; a process that only `launches` others (torchrun's launcher) never imports torch."""
    # `python -m stages.train`: its module is __main__, its spec is stages.train
    stage = run.__globals__["__spec__"].name.rsplit(".", 1)[-1]
    world = launch.current()  # a torchrun rank's logs say which rank; only rank 0's say more than warnings
    logging.basicConfig(
        level=logging.INFO if world.main else logging.WARNING,
        format=f"%(asctime)s {f'[rank {world.rank}] ' if world.size > 1 else ''}%(name)s %(message)s",
    )
    signal.signal(signal.SIGTERM, termination.on_signal)  # never inside a store write
    try:
        params = load_params()
        root = Path.cwd()
        check_outputs(stage, root)  # before anything is deleted or written
        # a torchrun rank: its launcher holds the workspace
        with nullcontext() if launch.launched() else one_stage_at_a_time(stage, root):
            check_committed(params.runtime.allow_dirty, layout.all_outputs())  # before any work, not after it
            computes = computes and not (launches and launches(params))
            if computes:
                from imgcls.engine import runtime

                pinned = params.runtime
                runtime.pin(pinned.reproducible, pinned.threads, runtime.resolve_device(pinned.device))
            run(build_context(stage, params, root, computes))
    except USER_ERRORS as error:
        if os.environ.get("PIPELINE_TRACEBACK"):
            raise
        log.error("%s: %s", type(error).__name__, worker_message(str(error)))
        log.error("(set PIPELINE_TRACEBACK=1 to see the traceback)")
        sys.exit(1)
    except KeyboardInterrupt as stop:
        log.error("stopped (%s): outputs were not written; run the stage again", stop or "Ctrl-C")
        sys.exit(143 if isinstance(stop, termination.Terminated) else 130)


def worker_message(message: str) -> str:
    """A DataLoader worker's error arrives wrapped in its traceback: keep the original message."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
