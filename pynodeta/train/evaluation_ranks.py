"""The processes of ``pynodeta evaluate --devices N`` (or of ``torchrun``): who is rank 0, and the one
collective the evaluation makes.

``--devices N`` starts N processes with ``torch.multiprocessing.spawn`` on this machine (gloo on CPU, NCCL
with one GPU each), meeting on a free port of 127.0.0.1; under ``torchrun`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` set) each process joins torchrun's group instead, spawning nothing. The
evaluation makes exactly one collective, :meth:`EvaluationRanks.gather`: every rank enters it once, with its
result or with the error that stopped it, so that no rank waits on one that has already failed; rank 0 alone
then scores, writes and prints.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
from dataclasses import dataclass

import torch

__all__ = ["EvaluationRanks", "torchrun_world_size", "free_port", "RankFailure"]

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# ranks wait in the gather for the slowest one (e.g. rank 0 resumed from a full cache while the others draw):
# hours, not torch's 30-minute default; a rank that dies ends the others anyway (spawn and torchrun both do)
_GATHER_TIMEOUT = datetime.timedelta(hours=48)


class RankFailure(RuntimeError):
    """An error on another rank, which rank 0 reports (its type and message)."""


def torchrun_world_size() -> int | None:
    """WORLD_SIZE when this process was started by torchrun (all of its variables set), else None."""
    if all(name in os.environ for name in _TORCHRUN_VARIABLES):
        return int(os.environ["WORLD_SIZE"])
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now, for the spawned ranks to meet at."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class EvaluationRanks:
    """This process's place among the evaluation's ranks; one process alone: rank 0 of 1, no group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, rank: int, world_size: int, local_rank: int, device_type: str,
             init_method: str = "env://") -> EvaluationRanks:
        """Join the group (NCCL on CUDA, one GPU per local rank; gloo on CPU) and return this rank's place."""
        import torch.distributed as dist

        device = torch.device("cpu")
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)  # gather_object's NCCL transfer goes through the current device
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=init_method, rank=rank,
                                world_size=world_size, timeout=_GATHER_TIMEOUT)
        return cls(rank, world_size, device)

    def leave(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def gather(self, work) -> list | None:
        """Run ``work()`` here and gather every rank's result to rank 0: the list of results in rank order on
        rank 0, None on the others. Every rank enters the gather once, an error included; an error on any
        rank is raised on rank 0 (and on the rank where it happened) after the gather."""
        try:
            outcome = ("ok", work())
        except Exception as error:  # noqa: BLE001 - carried to rank 0 and raised there
            outcome = ("error", _portable(error))
            if self.world_size == 1:
                raise
        if self.world_size == 1:
            return [outcome[1]]
        import torch.distributed as dist

        gathered = [None] * self.world_size if self.is_zero else None
        dist.gather_object(outcome, gathered, dst=0)
        if outcome[0] == "error" and not self.is_zero:
            raise outcome[1]
        if not self.is_zero:
            return None
        for rank, (status, value) in enumerate(gathered):
            if status == "error":
                raise value if rank == 0 else RankFailure(f"rank {rank}: {type(value).__name__}: {value}")
        return [value for _, value in gathered]


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling (gather_object pickles it), else a RankFailure with its message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any exception that cannot travel is sent as text
        return RankFailure(f"{type(error).__name__}: {error}")
