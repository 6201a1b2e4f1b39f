"""Rank helpers for commands that share independent work items out over ``torchrun`` processes.

Under ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on GPU) every rank runs the same command; without torchrun
the same code runs as one process and nothing here touches ``torch.distributed``::

    with process_group(prefer_cuda=False) as ranks:
        todo = broadcast(missing_points() if ranks.is_main else None, ranks)
        for item, result in map_sharded(todo, compute, ranks):   # only rank 0 gets pairs
            write(item, result)

:func:`map_sharded` goes in rounds of ``world`` items: rank r computes item r of each round, rank 0 gathers the
round's results (``all_gather_object``) and yields them, so the caller can flush after every round.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks, and the device it computes on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or dist.is_initialized()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or any launcher setting RANK and WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def process_group(prefer_cuda: bool = True) -> Iterator[Ranks]:
    """Join the process group torchrun set up (NCCL on GPU, gloo on CPU), or stand alone as rank 0 of 1."""
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if not launched_by_torchrun():
        yield Ranks(0, 1, torch.device("cuda" if use_cuda else "cpu"))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        yield Ranks(dist.get_rank(), dist.get_world_size(), device)
    finally:
        dist.destroy_process_group()


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world
    dist.all_gather_object(values, value)
    return values


def map_sharded(items: Sequence[Item], compute: Callable[[Item], Result],
                ranks: Ranks) -> Iterator[tuple[Item, Result]]:
    """``(item, compute(item))`` for every item, computed round-robin over the ranks; yielded on rank 0 only.

    Every rank must iterate the generator to the end (it holds the collective calls).
    """
    for start in range(0, len(items), ranks.world):
        chunk = items[start:start + ranks.world]
        mine = compute(chunk[ranks.rank]) if ranks.rank < len(chunk) else None
        results = gather(mine, ranks)
        if ranks.is_main:
            yield from zip(chunk, results[:len(chunk)])
