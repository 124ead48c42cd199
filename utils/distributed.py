"""torch.distributed setup for torchrun (WORLD_SIZE in the environment) and small collectives."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.tree import map_tensors, tensors


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; one process when not under torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def init_distributed() -> DistInfo:
    """Initialise the process group under torchrun: nccl on CUDA, gloo on CPU."""
    if "WORLD_SIZE" not in os.environ:
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(rank, world, local_rank)


def shutdown_distributed() -> None:
    """Destroy the process group once the objects that use it are gone: a DDP model still alive (or
    held by a reference cycle) when its group is destroyed hangs its process at exit on torch 2.4."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_statistics(statistics: Any) -> Any:
    """Sum a model's `out["statistics"]` (tensors (R, ...) in dicts or NamedTuples, `utils.tree`) over their
    leading (replica) dim and over ranks, in one all-reduce: the same structure of (...) tensors."""
    summed = map_tensors(lambda value: value.sum(0), statistics)
    if not (dist.is_available() and dist.is_initialized()):
        return summed
    leaves = tensors(summed)
    flat = all_reduce_sum(torch.cat([leaf.reshape(-1) for leaf in leaves]))
    parts = iter(flat.split([leaf.numel() for leaf in leaves]))
    return map_tensors(lambda leaf: next(parts).view_as(leaf), summed)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
