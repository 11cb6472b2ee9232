"""Runs per hour of `avvp sweep depth` on this machine: the runs one at a time, several at once, or stacked.

    python bench/sweep.py                                   # documented small setting: width 32, 400 videos
    python bench/sweep.py --dim 0 --configs han,mgn-3-3-6   # the papers' widths, two rows only
    python bench/sweep.py --arms workers1,workers2          # choose the arms
    python bench/sweep.py --device cuda --dim 0 --arms workers1,stack ...   # on a GPU (bench/gpu.sh)

Each arm runs the same `avvp sweep depth` command (a subprocess, timed whole: start-up, training, validation,
test, tables) into a fresh folder and prints its runs per hour and the ratio to one at a time:
- `workers1`: one run at a time in the sweep's process, all cores (`--workers 1`, the one-at-a-time baseline);
- `workers2`: two worker processes, each training one run after another, the cores split between them
  (`--workers 2`);
- `stack`: the seeds of each MGN row trained together as one stacked model in one process (`--stack`);
- `stack-workers2`: both (`--stack --workers 2`): each worker takes a stacked row or a HAN run at a time.
Data: LLP-Synth (--train/--val/--test videos, seed 0) generated once into --data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ARMS = {
    "workers1": ["--workers", "1"],
    "workers2": ["--workers", "2"],
    "stack": ["--workers", "1", "--stack"],
    "stack-workers2": ["--workers", "2", "--stack"],
}


def prepare_data(root: Path, train: int, val: int, test: int) -> None:
    from avvp.data.synth import SynthConfig, generate, load_config

    config = SynthConfig(train=train, val=val, test=test, seed=0)
    if load_config(root) != config:
        print(f"generating LLP-Synth ({train}/{val}/{test} videos) into {root} ...", file=sys.stderr)
        generate(root, config, overwrite=True)


def run_arm(arm: str, args: argparse.Namespace, out: Path) -> float:
    """Seconds for the whole sweep of this arm, in a fresh folder."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "avvp", "sweep", "depth", "--features", str(args.data / "feats")]
    command += ["--annotations", str(args.data), "--out", str(out), "--seeds", args.seeds]
    command += ["--epochs", str(args.epochs), "--device", args.device, *ARMS[arm]]
    if args.max_train_videos:
        command += ["--max-train-videos", str(args.max_train_videos)]
    if args.dim:
        command += ["--dim", str(args.dim)]
    if args.configs:
        command += ["--configs", args.configs]
    started = time.perf_counter()
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1")
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{arm} failed:\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("bench/.data/sweep_synth"), help="LLP-Synth folder (cached)")
    parser.add_argument("--out", type=Path, default=Path("bench/.data/sweep_runs"), help="sweep folders (replaced)")
    parser.add_argument("--train", type=int, default=400, help="training videos (default: 400)")
    parser.add_argument("--val", type=int, default=100, help="validation videos (default: 100)")
    parser.add_argument("--test", type=int, default=200, help="test videos (default: 200)")
    parser.add_argument("--seeds", default="1,2", help="seeds per row (default: 1,2)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default: 4)")
    parser.add_argument("--dim", type=int, default=32, help="model width of every run; 0 = the papers' (default: 32)")
    parser.add_argument("--configs", help="rows of the depth sweep (default: all seven)")
    parser.add_argument("--max-train-videos", type=int, help="train on the first N training videos only")
    parser.add_argument("--device", default="cpu", help="device of every run (default: cpu)")
    parser.add_argument(
        "--arms", default="workers1,workers2,stack,stack-workers2", help="comma-separated arms (default: all)"
    )
    args = parser.parse_args()
    prepare_data(args.data, args.train, args.val, args.test)
    runs = len(args.seeds.split(",")) * (len(args.configs.split(",")) if args.configs else 7)
    width = f"width {args.dim}" if args.dim else "the papers' widths"
    videos = min(args.train, args.max_train_videos or args.train)
    print(
        f"avvp sweep depth on LLP-Synth ({videos} train videos), {runs} runs of {args.epochs} epochs, {width}, "
        f"device {args.device}, {os.cpu_count()} cores"
    )
    baseline = None
    for arm in args.arms.split(","):
        seconds = run_arm(arm, args, args.out / arm)
        per_hour = runs * 3600 / seconds
        baseline = baseline or per_hour
        print(f"{arm:15s} {seconds:7.1f} s  {per_hour:6.1f} runs/hour  {per_hour / baseline:.2f}x", flush=True)


if __name__ == "__main__":
    main()
