"""Time `avvp.metrics.evaluate` on the real LLP test split (1,200 videos) against a per-video loop.

Predictions are random but at a realistic density: smooth random segment probabilities thresholded so that
about as many cells are positive as in the ground truth, in runs, as a model's output looks.

    .venv/bin/python bench/score.py [--annotations DIR] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from avvp.data.annotations import load_split
from avvp.metrics import COUNTED_TRACKS, LEVELS, evaluate, parse_predictions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ANNOTATIONS = REPO.parent / "shared" / "llp"
sys.path.insert(0, str(REPO / "tests"))
# The per-video loop, one video and one class at a time as the authors' evaluation is written: the reference the
# tests check `avvp.metrics` against.
from reference_metrics import reference_evaluate


def realistic_probabilities(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth random [N, 10, 25] probabilities whose positives (>= 0.5) are as dense as `truth`."""
    noise = rng.random(truth.shape)
    kernel = np.ones(3) / 3
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, noise)  # runs over time
    cut = np.quantile(smooth, 1 - truth.mean())
    return 1 / (1 + np.exp(-40 * (smooth - cut)))  # >= 0.5 exactly above the cut


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", default=os.environ.get("AVVP_ANNOTATIONS", DEFAULT_ANNOTATIONS))
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the vectorised metric")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    split = load_split(args.annotations, "test")
    rng = np.random.default_rng(args.seed)
    audio_probs = realistic_probabilities(split.audio, rng)
    visual_probs = realistic_probabilities(split.visual, rng)
    video_probs = np.maximum(audio_probs.max(axis=1), visual_probs.max(axis=1))  # [N, 25]
    pred_audio, pred_visual = parse_predictions(audio_probs, visual_probs, video_probs)

    def run_vectorised():
        return evaluate(pred_audio, pred_visual, split.audio, split.visual)

    scores = run_vectorised()  # warm-up
    vectorised = timed(run_vectorised, args.repeats)
    loop_start = time.perf_counter()
    loop_scores = reference_evaluate(pred_audio, pred_visual, split.audio, split.visual)
    loop_time = time.perf_counter() - loop_start
    for level in LEVELS:
        for track in COUNTED_TRACKS:
            assert abs(getattr(scores, level)[track] - loop_scores[level]["scores"][track]) < 1e-9, (level, track)

    print(f"LLP test: {len(split.filenames)} videos; predicted positive cells: audio {pred_audio.mean():.1%} "
          f"(ground truth {split.audio.mean():.1%}), visual {pred_visual.mean():.1%} "
          f"(ground truth {split.visual.mean():.1%})")  # fmt: skip
    print(f"{'implementation':<34}{'median':>10}{'min':>10}")
    print(f"{'avvp.metrics.evaluate':<34}{statistics.median(vectorised) * 1e3:>8.1f}ms{min(vectorised) * 1e3:>8.1f}ms")
    print(f"{'per-video loop (1 run)':<34}{loop_time * 1e3:>8.1f}ms{'':>10}")
    print(f"speed-up: {loop_time / statistics.median(vectorised):.0f}x; both give the same ten numbers")


if __name__ == "__main__":
    main()
