"""Run under torchrun by tests/test_distributed.py: one MGN step on this process's shard, as `avvp train` takes it.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT

Every process builds the same small MGN (seed 0), wraps it in DDP and takes one `TrainStep` in eval mode (no
noise, so the gradients are comparable) on its shard of a fixed global batch of 5 videos (rank r takes videos r,
r + 2, ...: 3 and 2). Rank 0 saves the averaged gradients; every rank saves noise drawn after `seed_noise`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from avvp.distributed import init_distributed, leave, seed_noise
from avvp.models import create_model
from avvp.recipe import TrainConfig
from avvp.steps import TrainStep, make_optimizer

GLOBAL_BATCH = 5
MODEL = {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 1}


def global_batch() -> tuple[torch.Tensor, ...]:
    """The fixed batch: features and labels (at least one class per video)."""
    generator = torch.Generator().manual_seed(7)
    audio = torch.randn(GLOBAL_BATCH, 10, 128, generator=generator)
    res152 = torch.rand(GLOBAL_BATCH, 10, 2048, generator=generator)
    r2plus1d = torch.rand(GLOBAL_BATCH, 10, 512, generator=generator)
    labels = (torch.rand(GLOBAL_BATCH, 25, generator=generator) < 0.15).float()
    labels[torch.arange(GLOBAL_BATCH), torch.arange(GLOBAL_BATCH)] = 1.0
    return audio, res152, r2plus1d, labels


def main(out: Path) -> None:
    ctx = init_distributed(torch.device("cpu"))
    torch.manual_seed(0)  # as `train`: the same initial weights everywhere, then each process's own noise
    model = create_model("mgn", **MODEL).eval()
    seed_noise(0, ctx)
    torch.save(torch.rand(8), out / f"noise{ctx.rank}.pt")
    step_model = nn.parallel.DistributedDataParallel(model) if ctx.enabled else model
    config = TrainConfig(model="mgn", precision="fp32")
    stepper = TrainStep(
        step_model, make_optimizer(model, config.lr), (), torch.zeros(0), config, torch.device("cpu"), "fp32", ctx
    )
    shard = [t[ctx.rank :: ctx.world_size] for t in global_batch()]
    stepper.step(*shard, GLOBAL_BATCH)
    if ctx.is_main:
        torch.save({name: p.grad for name, p in model.named_parameters() if p.grad is not None}, out / "grads.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    leave(0)  # as `python -m avvp` leaves under torchrun
