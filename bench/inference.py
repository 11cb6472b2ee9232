"""Predict + score of the 649 validation and 1,200 test videos (LLP sizes) on LLP-Synth, MGN and HAN.

    python bench/inference.py [--device cpu|cuda] [--precision fp32|bf16]

The features come from packs (in memory once loaded, as in training's per-epoch validation); the timed part is the
whole-split batched forward pass, the parse and the official metrics. Target: under 1 s on a 2-core CPU for the
649 validation videos.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from train import device_name, prepare_data  # bench/train.py (this folder is on sys.path when run as a script)

from avvp.data.annotations import load_split
from avvp.data.store import open_features
from avvp.inference import predict
from avvp.metrics import evaluate, parse_predictions
from avvp.models import create_model


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16 (default: fp32)")
    parser.add_argument("--batch-size", type=int, default=128, help="videos per forward pass (default: 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--data", type=Path, default=Path("bench/.data/synth-small"), help="LLP-Synth cache folder")
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    packs = prepare_data(args.data, 200, 0)
    store = open_features(packs)
    rows = []
    for name in ("mgn", "han"):
        torch.manual_seed(0)
        model = create_model(name).to(device).eval()
        for split_name in ("val", "test"):
            split = load_split(args.data, split_name)
            features = store.load(split.video_ids)

            def run(model=model, features=features, split=split) -> None:
                out = predict(model, features, batch_size=args.batch_size, device=device, precision=args.precision)
                pred_audio, pred_visual = parse_predictions(out["audio"], out["visual"], out["video"])
                evaluate(pred_audio, pred_visual, split.audio, split.visual)

            def score_only(split=split) -> None:
                evaluate(split.audio, split.visual, split.audio, split.visual)

            rows.append(
                (name, split_name, len(split.filenames), timed(run, args.repeats), timed(score_only, args.repeats))
            )
    print(f"\ndevice: {device_name(device)}; torch {torch.__version__}; precision {args.precision}")
    print(f"{'model':<6} {'split':<5} {'videos':>6} {'predict+score s':>16} {'score alone s':>14}")
    for name, split_name, count, total, score in rows:
        print(f"{name:<6} {split_name:<5} {count:>6} {total:>16.3f} {score:>14.3f}")
    print("target: 649 val videos in under 1 s on a 2-core CPU")


if __name__ == "__main__":
    main()
