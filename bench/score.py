"""Time `avvp.metrics.evaluate` on the real LLP test split (1,200 videos) against a per-video loop.

Predictions are random but at a realistic density: smooth random segment probabilities thresholded so that
about as many cells are positive as in the ground truth, in runs, as a model's output looks.

    .venv/bin/python bench/score.py [--annotations DIR] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from avvp.data.annotations import load_split
from avvp.metrics import COUNTED_TRACKS, LEVELS, evaluate, parse_predictions

DEFAULT_ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "llp"


def realistic_probabilities(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth random [N, 10, 25] probabilities whose positives (>= 0.5) are as dense as `truth`."""
    noise = rng.random(truth.shape)
    kernel = np.ones(3) / 3
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, noise)  # runs over time
    cut = np.quantile(smooth, 1 - truth.mean())
    return 1 / (1 + np.exp(-40 * (smooth - cut)))  # >= 0.5 exactly above the cut


def per_video_loop(pred_audio, pred_visual, gt_audio, gt_visual) -> dict[str, dict[str, float]]:
    """The straightforward way, one video and one class at a time (as the authors' evaluation is written)."""

    def runs(sequence):
        found, start = [], None
        for t, positive in enumerate([*sequence, False]):
            if positive and start is None:
                start = t
            elif not positive and start is not None:
                found.append((start, t))
                start = None
        return found

    def iou(a, b):
        overlap = max(0, min(a[1], b[1]) - max(a[0], b[0]))
        return overlap / (a[1] - a[0] + b[1] - b[0] - overlap)

    def counts(pred, truth, level):
        result = []
        for c in range(pred.shape[1]):
            if level == "segment":
                p, g = pred[:, c], truth[:, c]
                result.append((int(np.sum(p & g)), int(np.sum(p & ~g)), int(np.sum(~p & g))))
            else:
                p_runs, g_runs = runs(pred[:, c]), runs(truth[:, c])
                tp = sum(1 for p in p_runs if any(iou(p, g) >= 0.5 for g in g_runs))
                fn = sum(1 for g in g_runs if not any(iou(p, g) >= 0.5 for p in p_runs))
                result.append((tp, len(p_runs) - tp, fn))
        return result

    def video_f(class_counts):
        scores = [2 * tp / (2 * tp + fn + fp) for tp, fp, fn in class_counts if tp + fp or tp + fn]
        return sum(scores) / len(scores) if scores else 1.0

    out = {}
    for level in LEVELS:
        per_video = {track: [] for track in COUNTED_TRACKS}
        for n in range(len(pred_audio)):
            a = counts(pred_audio[n], gt_audio[n], level)
            v = counts(pred_visual[n], gt_visual[n], level)
            av = counts(pred_audio[n] & pred_visual[n], gt_audio[n] & gt_visual[n], level)
            pooled = [tuple(x + y for x, y in zip(ka, kv)) for ka, kv in zip(a, v)]
            for track, track_counts in zip(COUNTED_TRACKS, (a, v, av, pooled)):
                per_video[track].append(video_f(track_counts))
        out[level] = {track: 100 * float(np.mean(per_video[track])) for track in COUNTED_TRACKS}
    return out


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
    loop_scores = per_video_loop(pred_audio, pred_visual, split.audio, split.visual)
    loop_time = time.perf_counter() - loop_start
    for level in LEVELS:
        for track in COUNTED_TRACKS:
            assert abs(getattr(scores, level)[track] - loop_scores[level][track]) < 1e-9, (level, track)

    print(f"LLP test: {len(split.filenames)} videos; predicted positive cells: audio {pred_audio.mean():.1%} "
          f"(ground truth {split.audio.mean():.1%}), visual {pred_visual.mean():.1%} "
          f"(ground truth {split.visual.mean():.1%})")  # fmt: skip
    print(f"{'implementation':<34}{'median':>10}{'min':>10}")
    print(f"{'avvp.metrics.evaluate':<34}{statistics.median(vectorised) * 1e3:>8.1f}ms{min(vectorised) * 1e3:>8.1f}ms")
    print(f"{'per-video loop (1 run)':<34}{loop_time * 1e3:>8.1f}ms{'':>10}")
    print(f"speed-up: {loop_time / statistics.median(vectorised):.0f}x; both give the same ten numbers")


if __name__ == "__main__":
    main()
