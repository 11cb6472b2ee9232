"""A plain per-video implementation of the official LLP parse and metrics (spec section 5), loop by loop.

Tests compare `avvp.metrics` and everything that scores through it against these functions: they share no code
with the package, so a fault in the vectorised metrics cannot cancel out on both sides of an assertion.
"""

from __future__ import annotations

import numpy as np

COUNTED_TRACKS = ("audio", "visual", "audio_visual", "event")  # spec section 5; 'type' is the mean of the first three
IOU_THRESHOLD = 0.5  # spec section 5: a predicted event is a TP at IoU >= 0.5


def reference_parse(
    audio_probs: np.ndarray, visual_probs: np.ndarray, video_probs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """audio[t, c] = (P_a[t, c] >= 0.5) AND (p_av[c] >= 0.5); visual likewise. [N, 10, 25] probabilities -> bool."""
    pred_audio = np.asarray(audio_probs) >= 0.5
    pred_visual = np.asarray(visual_probs) >= 0.5
    if video_probs is not None:
        video_on = np.asarray(video_probs)[:, None, :] >= 0.5
        pred_audio, pred_visual = pred_audio & video_on, pred_visual & video_on
    return pred_audio, pred_visual


def reference_runs(sequence: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of True in a length-10 sequence."""
    runs, start = [], None
    for t, positive in enumerate(list(sequence) + [False]):
        if positive and start is None:
            start = t
        elif not positive and start is not None:
            runs.append((start, t))
            start = None
    return runs


def reference_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    overlap = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return overlap / ((a[1] - a[0]) + (b[1] - b[0]) - overlap)


def reference_counts(pred: np.ndarray, truth: np.ndarray, level: str) -> tuple[list[int], list[int], list[int]]:
    """TP, FP, FN per class of one video ([10, 25] bool each)."""
    tps, fps, fns = [], [], []
    num_segments, num_classes = truth.shape
    for c in range(num_classes):
        if level == "segment":
            tp = sum(1 for t in range(num_segments) if pred[t, c] and truth[t, c])
            fp = sum(1 for t in range(num_segments) if pred[t, c] and not truth[t, c])
            fn = sum(1 for t in range(num_segments) if not pred[t, c] and truth[t, c])
        else:
            pred_runs, truth_runs = reference_runs(pred[:, c]), reference_runs(truth[:, c])
            tp = fp = fn = 0
            for p in pred_runs:
                if any(reference_iou(p, g) >= IOU_THRESHOLD for g in truth_runs):
                    tp += 1
                else:
                    fp += 1
            for g in truth_runs:
                if not any(reference_iou(p, g) >= IOU_THRESHOLD for p in pred_runs):
                    fn += 1
        tps.append(tp)
        fps.append(fp)
        fns.append(fn)
    return tps, fps, fns


def reference_f(tps: list[int], fps: list[int], fns: list[int]) -> float:
    scores = [2 * tp / (2 * tp + fn + fp) for tp, fp, fn in zip(tps, fps, fns) if tp + fp != 0 or tp + fn != 0]
    return sum(scores) / len(scores) if scores else 1.0


def reference_evaluate(pred_a, pred_v, gt_a, gt_v, levels: tuple[str, ...] = ("segment", "event")) -> dict:
    """{level: {"scores": {track: score}, "per_video": ..., "counts": ...}}, one video at a time."""
    result = {}
    for level in levels:
        per_video = {track: [] for track in COUNTED_TRACKS}
        counts = {track: [] for track in COUNTED_TRACKS}
        for n in range(len(pred_a)):
            a = reference_counts(pred_a[n], gt_a[n], level)
            v = reference_counts(pred_v[n], gt_v[n], level)
            av = reference_counts(pred_a[n] & pred_v[n], gt_a[n] & gt_v[n], level)
            pooled = tuple([x + y for x, y in zip(ka, kv)] for ka, kv in zip(a, v))
            for track, track_counts in zip(COUNTED_TRACKS, (a, v, av, pooled)):
                per_video[track].append(reference_f(*track_counts))
                counts[track].append(track_counts)
        scores = {track: 100 * np.mean(np.array(per_video[track])) for track in COUNTED_TRACKS}
        scores["type"] = (scores["audio_visual"] + scores["audio"] + scores["visual"]) / 3.0
        result[level] = {"scores": scores, "per_video": per_video, "counts": counts}
    return result


def reference_event_recall(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per class, 100 x the share of ground-truth events ([N, 10, 25] bool) that some predicted event of the same
    video and class overlaps at IoU >= 0.5; NaN for a class without ground-truth events."""
    found, total = np.zeros(truth.shape[2]), np.zeros(truth.shape[2])
    for n in range(len(truth)):
        for c in range(truth.shape[2]):
            pred_runs = reference_runs(pred[n, :, c])
            for g in reference_runs(truth[n, :, c]):
                total[c] += 1
                found[c] += any(reference_iou(p, g) >= IOU_THRESHOLD for p in pred_runs)
    return [100 * f / t if t else float("nan") for f, t in zip(found, total)]
