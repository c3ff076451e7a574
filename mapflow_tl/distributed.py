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

__all__ = ["World", "world", "shard", "join_timeout", "JOIN_TIMEOUT_VARIABLE"]

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


#: Environment variable: seconds to wait for the other ranks to join (default
#: :data:`DEFAULT_JOIN_TIMEOUT`). A shell with a stale ``WORLD_SIZE``/``MASTER_ADDR`` left from
#: an earlier launch would otherwise wait for peers that never come, silently, for ever.
JOIN_TIMEOUT_VARIABLE = "MAPFLOW_JOIN_TIMEOUT"
DEFAULT_JOIN_TIMEOUT = 300.0
_UNSET = ("unset WORLD_SIZE, RANK and LOCAL_RANK to run as one process, or start every rank "
          "with torchrun / accelerate launch")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name}={text!r} is not a whole number: {_UNSET}") from None


def join_timeout() -> float:
    """Seconds to wait for the other ranks: ``$MAPFLOW_JOIN_TIMEOUT`` or 300."""
    text = os.environ.get(JOIN_TIMEOUT_VARIABLE, "")
    try:
        seconds = float(text) if text.strip() else DEFAULT_JOIN_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InputError(f"{JOIN_TIMEOUT_VARIABLE}={text!r}: expected a number of seconds > 0")
    return seconds


def world() -> World:
    """The launcher's world, read from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; initialises the
    process group (NCCL when CUDA is available, else gloo) when there is more than one process.

    Launcher variables that cannot describe a world (``WORLD_SIZE=abc``, several ranks without
    ``MASTER_ADDR``/``MASTER_PORT``) are one-line errors; ranks that do not all join within
    :func:`join_timeout` seconds are one too, instead of a wait without end."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={size}: check the launcher, or "
                         f"{_UNSET}")
    current = World(rank, size, local_rank)
    if current.distributed and not torch.distributed.is_initialized():
        _join(current)
    return current


def _join(current: World) -> None:
    """Join the launcher's process group. Under torchrun's agent the agent hosts the rendezvous
    and watches the ranks; otherwise the rendezvous store is opened here with the join timeout,
    so that missing peers end the wait with a one-line error."""
    from datetime import timedelta

    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise InputError(f"WORLD_SIZE={current.size} asks for several ranks but "
                         f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                         f"set: {_UNSET}")
    address, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        torch.distributed.init_process_group(backend=backend, rank=current.rank,
                                             world_size=current.size)
        return
    seconds = join_timeout()
    try:
        store = torch.distributed.TCPStore(address, port, current.size,
                                           is_master=current.rank == 0,
                                           timeout=timedelta(seconds=seconds),
                                           wait_for_workers=True)
    except (RuntimeError, OSError) as error:   # DistStoreError, DistNetworkError: timed out
        raise InputError(f"rank {current.rank} of WORLD_SIZE={current.size}: the other ranks did "
                         f"not join at MASTER_ADDR={address} MASTER_PORT={port} within "
                         f"{seconds:g} s ({type(error).__name__}); {_UNSET}, or set "
                         f"{JOIN_TIMEOUT_VARIABLE} to wait longer") from None
    store.set_timeout(timedelta(minutes=30))   # joined: later waits are the ranks' work
    torch.distributed.init_process_group(backend=backend, store=store, rank=current.rank,
                                         world_size=current.size)


def shard(items: Sequence[T], current: World) -> list[T]:
    """The items of this rank: item i goes to rank ``i % size``."""
    return list(items[current.rank::current.size])
