"""Where a process stands under torchrun, and the few collective operations training needs (gloo on CPU, nccl on
CUDA). Everything is a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class DistributedContext:
    """Where this process stands under torchrun (world size 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun set up; a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )


def seed_noise(seed: int, ctx: DistributedContext) -> None:
    """Give each process its own stream of training noise (dropout, stochastic depth, Gumbel) after the model was
    initialised from `seed` on every process. One process keeps the stream `seed` started (runs stay as they were);
    under DDP rank r draws from a seed derived from (seed, r), so the ranks' noise is independent."""
    if ctx.enabled:
        torch.manual_seed(int(np.random.SeedSequence(seed, spawn_key=(ctx.rank,)).generate_state(1)[0]))


def gather(value: Any, ctx: DistributedContext) -> list[Any]:
    """`value` from every process, by rank (on every process)."""
    if not ctx.enabled:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    return values


def sum_over_processes(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Element-wise sum of `values` over the processes (in place; returned)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()
