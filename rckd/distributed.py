"""Data-parallel training with torch.distributed, as `torchrun` (torch.distributed.run) launches it.

    torchrun --nproc_per_node 8 -m rckd train --dataset imagenet ...

Each process reads RANK, WORLD_SIZE and LOCAL_RANK from the environment torchrun sets, joins the
process group (NCCL on GPUs, gloo on the CPU) and trains its share of every batch; DDP averages the
gradients. Only rank 0 writes files. Every metric is a sum over all processes (never rank 0's shard).
Without torchrun (WORLD_SIZE unset or 1) nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rckd.device import resolve_device
from rckd.errors import RckdError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The one process that writes files and prints the log."""
        return self.rank == 0


def join(device_name: str) -> tuple[Group, torch.device | None]:
    """(this process's place, its device) under torchrun, else (a one-process group, None)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(), None
    group = Group(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if group.local_rank >= torch.cuda.device_count():
            raise RckdError(f"process {group.rank} wants GPU {group.local_rank}, but torch sees "
                            f"{torch.cuda.device_count()}; start torchrun with --nproc_per_node <= the GPUs")
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return group, device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def total(values: torch.Tensor, group: Group) -> torch.Tensor:
    """The sum of `values` over every process (in place; `values` itself with one process)."""
    if group.world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def anyone(flag: bool, group: Group, device: torch.device) -> bool:
    """Whether `flag` is set in any process: all stop at the same step, or none does."""
    if group.world == 1:
        return flag
    return bool(total(torch.tensor([float(flag)], device=device), group).item())
