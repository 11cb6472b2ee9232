"""Where a process stands under torchrun, and the few collective operations training needs (gloo on CPU, nccl on
CUDA). Everything is a no-op for one process."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch

from avvp.errors import AvvpError


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


def leave(status: int) -> NoReturn:
    """End this process with `status`. Under torchrun (WORLD_SIZE > 1), after flushing stdout and stderr, without
    the interpreter's clean-up: the process group's C++ threads can abort that clean-up ('terminate called without
    an active exception', seen in about 1 of 12 runs of 2 gloo processes), which would replace the status. A script
    that calls `avvp.training.train` under torchrun ends with it, as `python -m avvp` does."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def close_distributed() -> None:
    """Leave the process group torchrun set up, however the work ended: a process that exits with the group's
    threads still up can abort ('terminate called without an active exception') instead of exiting with its
    status."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def fail_together(ctx: DistributedContext) -> Iterator[None]:
    """Run a block that holds no collective operation (work one process does alone, such as the main process's
    checks and writes), then tell every process how it ended on each: where it failed on one, every other process
    raises an AvvpError with that error too, instead of waiting at the next collective operation for a process
    that is gone. An interrupt (Ctrl-C reaches every process) is not shared."""
    if not ctx.enabled:
        yield
        return
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        _share_outcome(ctx, _failure(err))
        raise
    rank, failure = _share_outcome(ctx, None)
    if failure is not None:
        raise AvvpError(f"process {rank} stopped: {failure}")


def _share_outcome(ctx: DistributedContext, failure: str | None) -> tuple[int | None, str | None]:
    """Every process's outcome of a block: (the lowest failed process's rank, its error), or (None, None)."""
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    first = torch.tensor([ctx.world_size if failure is None else ctx.rank], device=device)
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    rank = int(first.item())
    if rank == ctx.world_size:
        return None, None
    message = [failure]
    dist.broadcast_object_list(message, src=rank)
    return rank, message[0]


def _failure(err: BaseException) -> str:
    return str(err) if isinstance(err, AvvpError) else f"{type(err).__name__}: {err}"
