"""What JoMoLD's ranking pass costs: one training step of `avvp train --noise-ratios` against a plain one.

    python bench/jomold_cost.py                        # HAN and MGN (3,3,6), batch 16 (avvp's recipe) and 128
    python bench/jomold_cost.py --models han --batches 128 --steps 30

The step is `avvp.steps.TrainStep.run` exactly as `avvp train` takes it (forward, loss, backward, Adam), on fixed
random tensors shaped like a training batch, once plain and once with a `Denoiser` whose ratios are 0.3 for every
class (the rule runs in full either way: its cost does not depend on the ratios). Printed per model and batch: the
median step time of each (after warm-up), the ranking pass's share of the denoised step, and the machine. Run it
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
from profile_step import timed  # bench/, the script's folder

from avvp.denoise import Denoiser, NoiseRatios
from avvp.distributed import DistributedContext
from avvp.models import create_model
from avvp.recipe import TrainConfig
from avvp.steps import TrainStep, make_optimizer


def make_step(name: str, batch: int, seed: int = 0) -> TrainStep:
    """A fresh model's training step whose training set is one random batch of `batch` videos."""
    torch.manual_seed(seed)
    model = create_model(name).train()
    config = TrainConfig(model=name, precision="fp32")
    generator = torch.Generator().manual_seed(seed)
    tensors = (
        torch.randn(batch, 10, 128, generator=generator),
        torch.rand(batch, 10, 2048, generator=generator),
        torch.rand(batch, 10, 512, generator=generator),
    )
    labels = (torch.rand(batch, 25, generator=generator) < 0.1).float()
    cpu = torch.device("cpu")
    return TrainStep(
        model, make_optimizer(model, config.lr), tensors, labels, config, cpu, "fp32", DistributedContext()
    )


def measure(name: str, batch: int, steps: int) -> tuple[float, float]:
    """Median seconds of a plain step and of a denoised one (the same model and batch)."""
    index = torch.arange(batch)
    plain = make_step(name, batch)
    denoised = make_step(name, batch)
    ratios = NoiseRatios(np.full(25, 0.3), np.full(25, 0.3), {})
    denoised.denoiser = Denoiser(ratios, denoised.config, torch.device("cpu"), "fp32")
    denoised.denoiser.set_epoch(denoised.config.denoise_from_epoch)
    return timed(lambda: plain.run(index, batch), steps), timed(lambda: denoised.run(index, batch), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="han,mgn", help="comma-separated models (default: han,mgn)")
    parser.add_argument("--batches", default="16,128", help="comma-separated batch sizes (default: 16,128)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default: 20)")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| model | batch | plain step (ms) | with JoMoLD (ms) | ranking pass share of the step |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            plain, denoised = measure(name, batch, args.steps)
            share = 100 * (denoised - plain) / denoised
            print(f"| {name} | {batch} | {1000 * plain:.1f} | {1000 * denoised:.1f} | {share:.0f} % |")


if __name__ == "__main__":
    main()
