"""Which training process this is, and what the processes share: the launcher's environment (torchrun,
accelerate) read in one place, and the few collective calls the trainers make outside TRL.

Under a launcher every process trains; only the main process (rank 0) writes the output folder. Work
that every process needs the result of (ExP-DPO's pairs) is split by rows: process r takes rows
r, r + W, r + 2W, ... (`shard`), and `gather_shards` puts every process's results back in row order,
the same list on every process.

    join_process_group()               # collectives before the first trainer need the group
    mine = shard(rows)                 # this process's share
    outs = gather_shards([work(row) for row in mine], len(rows))  # everyone's, in the order of rows
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Training processes of this run: $WORLD_SIZE, which torchrun and accelerate launch set (1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index among the run's processes: $RANK (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its node, which is also its GPU: $LOCAL_RANK (0 alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 (or a run without a launcher): the one process that writes the output folder."""
    return rank() == 0


def join_process_group() -> None:
    """Join the launcher's process group now, if this run has several processes and none is joined yet.

    TRL's trainers join it when they are built; ExP-DPO samples its first pairs before any trainer
    exists and needs the group to gather them. The trainer built later finds the group and keeps it
    (accelerate joins only when none is). NCCL needs each process on its own GPU first."""
    import torch
    import torch.distributed as dist

    if world_size() == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: positions rank, rank + W, rank + 2W, ... (all of them alone)."""
    return list(items[rank()::world_size()])


def gather_shards(part: list[T], total: int) -> list[T]:
    """Every process's `part` (its results for `shard(items)`, one per item) back in the order of the
    `total` items, the same list on every process."""
    world = world_size()
    if world == 1:
        return list(part)
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, part)
    out: list[Any] = [None] * total
    for r, got in enumerate(parts):
        expected = len(range(r, total, world))
        if len(got) != expected:
            raise RuntimeError(f"process {r} returned {len(got)} results for its {expected} of {total} items")
        out[r::world] = got
    return out


def gather_lists(part: list[T]) -> list[T]:
    """Every process's `part`, concatenated in rank order, the same list on every process."""
    if world_size() == 1:
        return list(part)
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, part)
    return [item for got in parts for item in got]


def from_main(compute: Callable[[], T]) -> T:
    """`compute()` run on the main process only and its result given to every process, so all of them
    take the same branch (a file one process sees and another might not, read once)."""
    if world_size() == 1:
        return compute()
    import torch.distributed as dist

    box: list[Any] = [compute() if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = ["from_main", "gather_lists", "gather_shards", "is_main_process", "join_process_group",
           "local_rank", "rank", "shard", "world_size"]
