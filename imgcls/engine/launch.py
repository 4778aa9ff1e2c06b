"""The processes of a distributed run, without torch: which one this is (torchrun's environment), and the
launcher that starts torchrun from the train stage and waits for it. A launcher never imports torch, so it
starts in a fraction of a second."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgcls.config.params import DistributedParams

log = logging.getLogger("distributed")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The one process that writes files and talks to MLflow."""
        return self.rank == 0


def launched() -> bool:
    """True inside a process that torchrun started (it sets LOCAL_RANK, RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ


def current() -> World:
    """This process's world from torchrun's environment (a world of one outside torchrun)."""
    if not launched():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def torchrun_command(module: str, cfg: DistributedParams, node_rank: int = 0) -> list[str]:
    """The torchrun line that runs `python -m module` on this node for `train.distributed`'s processes: static
    rendezvous (rank 0 on node 0), and up to `max_restarts` restarts of every rank after one dies (each rank
    then resumes from the last checkpoint, into the same MLflow run)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={cfg.nnodes}",
        f"--nproc_per_node={cfg.nproc_per_node}",
        f"--node_rank={node_rank}",
        f"--master_addr={cfg.master_addr}",
        f"--master_port={cfg.master_port}",
        f"--max_restarts={cfg.max_restarts}",
        "-m",
        module,
    ]


class DistributedRunFailed(RuntimeError):
    """A rank exited with an error or was killed; torchrun stopped the others."""


def run_under_torchrun(command: list[str], restarts: int) -> None:
    """Run the stage's ranks through torchrun from this (launcher) process, which itself does no work. A
    SIGTERM or Ctrl-C here is passed on to torchrun, which stops every rank."""
    log.info("launching: %s", " ".join(command[1:]))
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        raise
    if code != 0:
        raise DistributedRunFailed(
            f"distributed training failed: torchrun exited with code {code}, with train.distributed."
            f"max_restarts = {restarts} restart(s) allowed (its report above names the rank, its exit code "
            "or signal, and the host). Fix the cause and run `dvc repro` again: it resumes from the last "
            "checkpoint"
        )
