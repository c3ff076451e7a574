"""Data-parallel analysis runs under an existing launcher (``torchrun``, ``accelerate launch``,
SLURM through either).

No scheduler of our own: the launcher starts the processes and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``torch.distributed`` (gloo on CPU, NCCL on GPUs) provides the barrier. Samples are
sharded deterministically (sample i goes to rank i mod world size), each rank writes its own
crash-safe shard under ``OUT/shards/rank-NNN/``, and rank 0 merges the shards into ``OUT`` in the
original sample order — the same rows a single process writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

from .errors import InputError

__all__ = ["World", "world", "shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process' place among the launcher's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: str) -> str:
        """``cuda`` becomes this process' own GPU, ``cuda:LOCAL_RANK``."""
        return f"cuda:{self.local_rank}" if self.distributed and device == "cuda" else device

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def world() -> World:
    """The launcher's world, read from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; initialises the
    process group (NCCL when CUDA is available, else gloo) when there is more than one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < size:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={size}: check the launcher")
    current = World(rank, size, local_rank)
    if current.distributed and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=size)
    return current


def shard(items: Sequence[T], current: World) -> list[T]:
    """The items of this rank: item i goes to rank ``i % size``."""
    return list(items[current.rank::current.size])
