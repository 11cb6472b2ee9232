"""Calibration runs of LLP-Synth: generate a variant, train HAN and MGN on it, print both models' test scores.

Every run of the LLP-Synth calibration in docs/synth.md was made with this script:

    python bench/synth_calibration.py --out runs/calib --name v2-c1 --set temporal_context=0.4 \
        --recipe full --seeds 1 2 3

`--recipe full` is the authors' recipe (40 epochs, StepLR 10, batch 16, Adam 3e-4) on the default-size
LLP-Synth (3,000 / 300 / 600 videos); `--recipe demo` is `avvp demo`'s recipe on its 1,500 / 300 / 600 set.
The models train as parallel `avvp train` processes, one torch thread each (a 2-core machine runs two at
once). Data folders are cached by their SynthConfig (OUT/data-<hash>); runs land in OUT/<name>/<model>-s<seed>
and finished runs are reused. One JSON line per run is appended to OUT/calibration.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from avvp.data.synth import SynthConfig
from avvp.demo import DemoConfig, prepare_data

RECIPES = {  # (train videos, epochs, StepLR step)
    "full": (SynthConfig().train, 40, 10),
    "demo": (DemoConfig().train, DemoConfig().epochs, DemoConfig().lr_step),
}


def parse_settings(pairs: list[str]) -> dict[str, float | int]:
    """`key=value` SynthConfig overrides (ints stay ints)."""
    fields = {field.name: field for field in dataclasses.fields(SynthConfig)}
    settings: dict[str, float | int] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            sys.exit(f"--set {pair}: unknown SynthConfig field (known: {', '.join(fields)})")
        settings[key] = int(value) if fields[key].type == "int" else float(value)
    return settings


def train_run(model: str, seed: int, data: Path, run_dir: Path, epochs: int, lr_step: int) -> dict:
    """One `avvp train` process (one thread); returns its test scores and validation curve."""
    if not (run_dir / "test_scores.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts again
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "avvp", "train", "--model", model, "--features", str(data / "packs")]
        command += ["--annotations", str(data), "--out", str(run_dir), "--epochs", str(epochs)]
        command += ["--lr-step", str(lr_step), "--seed", str(seed), "--device", "cpu", "--precision", "fp32"]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    test = json.loads((run_dir / "test_scores.json").read_text())
    return {
        "model": model,
        "seed": seed,
        "test_segment": test["segment"],
        "test_event": test["event"],
        "best_epoch": test["best_epoch"],
        "val_type_curve": [round(h["val"]["segment"]["type"], 1) for h in history],
        "train_seconds": round(sum(h["train_seconds"] for h in history)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for data, runs and calibration.jsonl")
    parser.add_argument("--name", required=True, help="name of this calibration point")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SynthConfig overrides")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="full", help="training recipe and data size")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="training seeds (default: 1)")
    parser.add_argument("--models", nargs="+", default=["han", "mgn"], help="models (default: han mgn)")
    parser.add_argument("--parallel", type=int, default=2, help="training processes at once (default: 2)")
    args = parser.parse_args()

    train_videos, epochs, lr_step = RECIPES[args.recipe]
    settings = parse_settings(args.set)
    config = dataclasses.replace(SynthConfig(), train=train_videos, **settings)
    digest = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    data = args.out / f"data-{digest}"
    prepare_data(data, config, progress=False)
    started = time.time()
    jobs = [(model, seed) for seed in args.seeds for model in args.models]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(
            pool.map(
                lambda job: train_run(*job, data, args.out / args.name / f"{job[0]}-s{job[1]}", epochs, lr_step), jobs
            )
        )
    with open(args.out / "calibration.jsonl", "a") as handle:
        for result in results:
            record = {"name": args.name, "recipe": args.recipe, "settings": settings, **result}
            handle.write(json.dumps(record) + "\n")
    for result in results:
        seg = result["test_segment"]
        print(
            f"{args.name} {args.recipe} {result['model']} seed {result['seed']}: test segment A {seg['audio']:.1f} "
            f"V {seg['visual']:.1f} AV {seg['audio_visual']:.1f} Type@AV {seg['type']:.1f} Event@AV "
            f"{seg['event']:.1f} (best epoch {result['best_epoch']}; val {result['val_type_curve']}; "
            f"{result['train_seconds']} s)"
        )
    print(f"{len(jobs)} run(s) in {time.time() - started:.0f} s; data {data}")


if __name__ == "__main__":
    main()
