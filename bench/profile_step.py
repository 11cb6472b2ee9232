"""Where the time of one CPU training step goes, and how close it is to the machine's dense GEMM rate.

    python bench/profile_step.py                     # MGN (3,3,6) and HAN, batch 16, fp32 and bf16
    python bench/profile_step.py --models mgn --precisions fp32 --steps 50
    python bench/profile_step.py --stack 3 --dims 32,128  # S runs stacked (StackedTrainStep) vs S steps one by one

One step is exactly what `avvp train` runs (`avvp.steps.TrainStep`: forward, the recipe's loss, backward, fused
Adam) on fixed random tensors shaped like a training batch (ResNet-152 already averaged per second, as in
training). Printed, per model and precision:
- step time (median of --steps after warm-up) and videos/s;
- FLOPs of one step (torch's FLOP counter) and the achieved GFLOP/s, as a share of the dense GEMM rate measured
  in the same run (a 2048 x 2048 fp32 matrix product, median of 20);
- the step's self CPU time by op kind (torch.profiler), and the forward time per top-level module.
With --stack S: the time of S runs' steps taken one by one (S `TrainStep`s) against one `StackedTrainStep` of the
S runs, per model width (--dims), and the ratio (what `avvp sweep --stack` gains per step).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from avvp.distributed import DistributedContext
from avvp.models import create_model
from avvp.recipe import TrainConfig
from avvp.steps import StackedTrainStep, TrainStep, make_optimizer

BATCH = 16
OP_KINDS = {  # op name fragment -> kind, first match wins
    "mm": "matrix products (mm, addmm, bmm)",
    "scaled_dot_product": "attention (SDPA)",
    "softmax": "softmax",
    "gelu": "GELU",
    "layer_norm": "LayerNorm",
    "adam": "Adam",
    "copy_": "copies",
    "cat": "copies",
}


def gemm_rate(size: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of a dense size x size fp32 matrix product on this machine (median)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def make_step(
    name: str, precision: str, *, seed: int = 0, dim: int | None = None
) -> tuple[TrainStep, tuple[torch.Tensor, ...]]:
    """A training step of a fresh model (its default width, or `dim`) and a batch of random tensors; the tensors
    are also the step's training set, so that `step.run(index)` takes them as `avvp train` does."""
    torch.manual_seed(seed)
    model = create_model(name, **({"dim": dim} if dim else {})).train()
    config = TrainConfig(model=name, precision=precision)
    optimizer = make_optimizer(model, config.lr)
    generator = torch.Generator().manual_seed(seed)
    batch = (
        torch.randn(BATCH, 10, 128, generator=generator),
        torch.rand(BATCH, 10, 2048, generator=generator),
        torch.rand(BATCH, 10, 512, generator=generator),
        (torch.rand(BATCH, 25, generator=generator) < 0.1).float(),
    )
    cpu, ctx = torch.device("cpu"), DistributedContext()
    return TrainStep(model, optimizer, batch[:3], batch[3], config, cpu, precision, ctx), batch


def timed(function, steps: int) -> float:
    """Median seconds of `function()` over `steps` calls, after 5 warm-up calls."""
    for _ in range(5):
        function()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stacking(name: str, precision: str, runs: int, dim: int | None, steps: int) -> tuple[float, float]:
    """Seconds for one step of each of `runs` runs taken one by one, and for one stacked step of all of them."""
    made = [make_step(name, precision, seed=seed, dim=dim)[0] for seed in range(runs)]
    index = torch.arange(BATCH)
    one_by_one = timed(lambda: [step.run(index, BATCH) for step in made], steps)
    stacked = StackedTrainStep(made)
    return one_by_one, timed(lambda: stacked([index] * runs, BATCH), steps)


def step_time(step: TrainStep, batch: tuple[torch.Tensor, ...], steps: int) -> float:
    return timed(lambda: step.step(*batch, BATCH), steps)


def step_flops(step: TrainStep, batch: tuple[torch.Tensor, ...]) -> int:
    with FlopCounterMode(display=False) as counter:
        step.step(*batch, BATCH)
    return counter.get_total_flops()


def op_kinds(step: TrainStep, batch: tuple[torch.Tensor, ...], steps: int = 10) -> dict[str, float]:
    """Self CPU milliseconds per step by op kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step.step(*batch, BATCH)
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        kind = next((k for fragment, k in OP_KINDS.items() if fragment in event.key.lower()), "other")
        kinds[kind] += event.self_cpu_time_total / 1e3 / steps
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


def module_forward_times(step: TrainStep, batch: tuple[torch.Tensor, ...], steps: int = 10) -> dict[str, float]:
    """Forward milliseconds per step of each top-level module (timed with hooks; CPU work is synchronous)."""
    model, starts, totals = step.model, {}, defaultdict(float)
    hooks = []
    for name, module in model.named_children():

        def before(mod, args, name=name):
            starts[name] = time.perf_counter()

        def after(mod, args, output, name=name):
            totals[name] += (time.perf_counter() - starts[name]) * 1e3 / steps

        hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    for _ in range(steps):
        step.step(*batch, BATCH)
    for hook in hooks:
        hook.remove()
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def print_stacking(args: argparse.Namespace) -> None:
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.stack} runs, batch {BATCH} each")
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            for dim in (int(d) for d in args.dims.split(",")):
                alone, stacked = stacking(name, precision, args.stack, dim or None, args.steps)
                print(
                    f"{name.upper()} {precision} width {dim or 'default'}: one by one {alone * 1e3:.1f} ms, stacked "
                    f"{stacked * 1e3:.1f} ms: {alone / stacked:.2f}x"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mgn,han", help="comma-separated models (default: mgn,han)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated precisions (default: fp32,bf16)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row (default: 30)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--stack", type=int, metavar="S", help="time S runs stacked against one by one instead")
    parser.add_argument("--dims", default="32,128", help="model widths for --stack (default: 32,128; 0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stack:
        print_stacking(args)
        return
    rate = gemm_rate()
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"dense GEMM rate (2048 x 2048 fp32): {rate:.0f} GFLOP/s\n")
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            step, batch = make_step(name, precision)
            seconds = step_time(step, batch, args.steps)
            flops = step_flops(step, batch)
            achieved = flops / seconds / 1e9
            print(
                f"{name.upper()} {precision} batch {BATCH}: {seconds * 1e3:.1f} ms/step, "
                f"{BATCH / seconds:.0f} videos/s, {flops / 1e9:.2f} GFLOP/step, {achieved:.0f} GFLOP/s = {100 * achieved / rate:.0f}% of the GEMM rate"
            )
            kinds = op_kinds(step, batch)
            total = sum(kinds.values())
            print("  self CPU time by op kind (ms/step): " + ", ".join(f"{k} {v:.1f}" for k, v in kinds.items()))
            print(f"  (total {total:.1f} ms under the profiler)")
            modules = module_forward_times(step, batch)
            print("  forward per module (ms/step): " + ", ".join(f"{k} {v:.1f}" for k, v in modules.items()))
            print()


if __name__ == "__main__":
    main()
