"""The official LLP metrics (segment- and event-level F-scores), vectorised over videos.

Semantics are those of the HAN authors' evaluation code (its `eval_metrics.py`). Per video and class, TP/FP/FN are
counted over the 10 segments (segment level) or over events, the maximal runs of positive segments (event
level: a predicted event is a TP when some ground-truth event of the class has IoU >= 0.5 with it). A class's
F is 2TP / (2TP + FN + FP), averaged over the classes with any prediction or ground truth in the video (1.0
when there are none); the dataset score is 100 x the mean over videos. The 'event' track pools the audio and
visual counts per class. Sums are taken in the same order as the official code, so scores match it exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from avvp.data.classes import NUM_CLASSES, NUM_SEGMENTS

TRACKS = ("audio", "visual", "audio_visual", "type", "event")
COUNTED_TRACKS = ("audio", "visual", "audio_visual", "event")  # tracks with their own counts ('type' is a mean)
LEVELS = ("segment", "event")
TRACK_TITLES = {
    "audio": "Audio",
    "visual": "Visual",
    "audio_visual": "Audio-Visual",
    "type": "Type@AV",
    "event": "Event@AV",
}
IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class TrackCounts:
    """Per-video, per-class counts of one track at one level, and each video's F."""

    tp: np.ndarray  # [N, 25] int64
    fp: np.ndarray  # [N, 25] int64
    fn: np.ndarray  # [N, 25] int64
    video_f: np.ndarray  # [N] float64, the video's mean F over its active classes (1.0 when none)

    def class_recall(self) -> np.ndarray:
        """Recall per class over all videos, in percent [25] (NaN for a class without ground truth)."""
        tp, fn = self.tp.sum(axis=0), self.fn.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * tp / (tp + fn)


@dataclass(frozen=True)
class Scores:
    """The ten official numbers (percent, unrounded) and the counts behind them.

    `segment` and `event` map each of TRACKS to a dataset score; `segment_counts` and `event_counts` map the
    four counted tracks (audio, visual, audio_visual, event) to their per-video, per-class counts.
    """

    segment: dict[str, float]
    event: dict[str, float]
    segment_counts: dict[str, TrackCounts]
    event_counts: dict[str, TrackCounts]

    def as_dict(self) -> dict[str, dict[str, float]]:
        """`{"segment": {track: score}, "event": {...}}`, the JSON form."""
        return {"segment": dict(self.segment), "event": dict(self.event)}


def parse_predictions(
    audio_probs: np.ndarray,
    visual_probs: np.ndarray,
    video_probs: np.ndarray | None = None,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The official parse: segment >= threshold AND (video-level >= threshold when `video_probs` is given).

    Args:
        audio_probs: [N, 10, 25] audio segment probabilities (or 0/1).
        visual_probs: [N, 10, 25] visual segment probabilities (or 0/1).
        video_probs: [N, 25] video-level probabilities (the model's audio-visual `video` output), optional.
        threshold: decision threshold (0.5 in the official evaluation).

    Returns:
        (pred_audio, pred_visual), bool [N, 10, 25] each.
    """
    pred_audio = np.asarray(audio_probs) >= threshold  # [N, 10, 25]
    pred_visual = np.asarray(visual_probs) >= threshold  # [N, 10, 25]
    if video_probs is not None:
        video_on = (np.asarray(video_probs) >= threshold)[:, None, :]  # [N, 1, 25]
        pred_audio &= video_on
        pred_visual &= video_on
    return pred_audio, pred_visual


def _video_f(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Each video's mean F over the classes with any prediction or ground truth (1.0 when none): [N, 25] -> [N]."""
    denominator = 2 * tp + (fn + fp)  # [N, 25], zero exactly for classes with no prediction and no ground truth
    active = denominator > 0
    class_f = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=active)  # [N, 25]
    # A running sum adds the classes one after another, in the official code's order (np.sum may pair them up).
    total = np.add.accumulate(class_f, axis=1)[:, -1]  # [N]
    count = active.sum(axis=1)  # [N]
    return np.divide(total, count, out=np.ones(total.shape), where=count > 0)


def _counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> TrackCounts:
    return TrackCounts(tp, fp, fn, _video_f(tp, fp, fn))


def _segment_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment-level TP, FP, FN per video and class: bool [N, 10, 25] -> int64 [N, 25] each."""
    tp = (pred & truth).sum(axis=1, dtype=np.int64)
    fp = pred.sum(axis=1, dtype=np.int64) - tp
    fn = truth.sum(axis=1, dtype=np.int64) - tp
    return tp, fp, fn


def _interval_table(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every interval [s, e) with 0 <= s < e <= length gets an index k: ([length+1, length+1] k or -1, [K, K] matches).

    matches[k, l] is True where intervals k and l have IoU >= 0.5 (overlap / union, in segments).
    """
    starts, ends = np.triu_indices(length + 1, k=1)  # [K] each
    index = np.full((length + 1, length + 1), -1, dtype=np.int64)
    index[starts, ends] = np.arange(len(starts))
    overlap = np.clip(np.minimum(ends[:, None], ends[None, :]) - np.maximum(starts[:, None], starts[None, :]), 0, None)
    union = (ends - starts)[:, None] + (ends - starts)[None, :] - overlap
    return index, overlap / union >= IOU_THRESHOLD


_INTERVAL_INDEX, _IOU_MATCHES = _interval_table(NUM_SEGMENTS)


def _runs(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of positive segments: bool [N, 10, 25] -> (sequence = video * 25 + class, start, end) [R] each."""
    count = segments.shape[0]
    padded = np.zeros((count, NUM_CLASSES, NUM_SEGMENTS + 2), dtype=np.int8)  # [N, 25, 12], 0 at both ends
    padded[:, :, 1:-1] = segments.transpose(0, 2, 1)
    steps = np.diff(padded.reshape(count * NUM_CLASSES, NUM_SEGMENTS + 2), axis=1)  # [N*25, 11]: +1 start, -1 end
    # In row-major order the steps of every sequence alternate start, end, start, end, ...
    changes = np.flatnonzero(steps)
    starts, ends = changes[0::2], changes[1::2]
    width = NUM_SEGMENTS + 1
    return starts // width, starts % width, ends % width


def extract_events(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The events (maximal runs of positive segments) of every video and class.

    Args:
        segments: [N, 10, 25] bool.

    Returns:
        (video, class_index, start, end) int arrays [R], one entry per event covering segments start .. end-1,
        sorted by video, class and start.
    """
    sequence, start, end = _runs(np.asarray(segments, dtype=bool))
    return sequence // NUM_CLASSES, sequence % NUM_CLASSES, start, end


def _event_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event-level TP, FP, FN per video and class: bool [N, 10, 25] -> int64 [N, 25] each.

    Events of one sequence are disjoint, so a predicted event matches at most one ground-truth event at IoU >= 0.5
    and the reverse: TP = matched pairs, FP = unmatched predicted events, FN = unmatched ground-truth events.
    """
    count = pred.shape[0]
    sequences = count * NUM_CLASSES
    pred_row, pred_start, pred_end = _runs(pred)  # [P] each
    truth_row, truth_start, truth_end = _runs(truth)  # [G] each
    truth_has = np.zeros((sequences, len(_IOU_MATCHES)), dtype=bool)  # [N*25, K]: which intervals are gt events
    truth_has[truth_row, _INTERVAL_INDEX[truth_start, truth_end]] = True
    matched = (truth_has[pred_row] & _IOU_MATCHES[_INTERVAL_INDEX[pred_start, pred_end]]).any(axis=1)  # [P]
    tp = np.bincount(pred_row[matched], minlength=sequences)
    fp = np.bincount(pred_row, minlength=sequences) - tp
    fn = np.bincount(truth_row, minlength=sequences) - tp
    shape = (count, NUM_CLASSES)
    return tp.reshape(shape).astype(np.int64), fp.reshape(shape).astype(np.int64), fn.reshape(shape).astype(np.int64)


def _check_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shapes = {name: np.shape(array) for name, array in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 3 or first[1:] != (NUM_SEGMENTS, NUM_CLASSES) or len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"evaluate expects four [N, {NUM_SEGMENTS}, {NUM_CLASSES}] arrays of one shape, got {listed}")
    return {name: np.asarray(array).astype(bool, copy=False) for name, array in arrays.items()}


def _dataset_scores(counts: dict[str, TrackCounts]) -> dict[str, float]:
    scores = {track: 100 * float(np.mean(counts[track].video_f)) for track in COUNTED_TRACKS}
    # Type@AV in the official code's order of terms.
    scores["type"] = (scores["audio_visual"] + scores["audio"] + scores["visual"]) / 3.0
    return {track: scores[track] for track in TRACKS}


def evaluate(pred_audio: np.ndarray, pred_visual: np.ndarray, gt_audio: np.ndarray, gt_visual: np.ndarray) -> Scores:
    """Score a parse against dense ground truth with the official segment- and event-level metrics.

    Args:
        pred_audio, pred_visual: [N, 10, 25] bool (or 0/1) predicted audio / visual events.
        gt_audio, gt_visual: [N, 10, 25] bool ground truth.

    Returns:
        Scores with the ten numbers in percent and the per-video, per-class counts.
    """
    arrays = _check_arrays({"pred_audio": pred_audio, "pred_visual": pred_visual, "gt_audio": gt_audio,
                            "gt_visual": gt_visual})  # fmt: skip
    pred = {"audio": arrays["pred_audio"], "visual": arrays["pred_visual"]}
    truth = {"audio": arrays["gt_audio"], "visual": arrays["gt_visual"]}
    pred["audio_visual"] = pred["audio"] & pred["visual"]
    truth["audio_visual"] = truth["audio"] & truth["visual"]
    levels = {}
    for level, count_fn in (("segment", _segment_counts), ("event", _event_counts)):
        raw = {track: count_fn(pred[track], truth[track]) for track in ("audio", "visual", "audio_visual")}
        raw["event"] = tuple(a + v for a, v in zip(raw["audio"], raw["visual"]))  # pooled audio + visual counts
        levels[level] = {track: _counts(*raw[track]) for track in COUNTED_TRACKS}
    return Scores(
        segment=_dataset_scores(levels["segment"]),
        event=_dataset_scores(levels["event"]),
        segment_counts=levels["segment"],
        event_counts=levels["event"],
    )


def format_scores(scores: Scores) -> str:
    """The ten numbers as a table with one decimal: rows Segment-level / Event-level, one column per track."""
    label_width = len("Segment-level")
    widths = [max(len(TRACK_TITLES[track]), 5) for track in TRACKS]
    header = " " * label_width + "".join(f"  {TRACK_TITLES[t]:>{w}}" for t, w in zip(TRACKS, widths))
    rows = [header]
    for level, title in (("segment", "Segment-level"), ("event", "Event-level")):
        values = getattr(scores, level)
        rows.append(f"{title:<{label_width}}" + "".join(f"  {values[t]:>{w}.1f}" for t, w in zip(TRACKS, widths)))
    return "\n".join(rows)


def scores_json(scores: Scores) -> str:
    """The scores as JSON text (unrounded, percent): `{"segment": {...}, "event": {...}}`."""
    return json.dumps(scores.as_dict(), indent=2) + "\n"


def token_scores(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """MGN's grouped class tokens of one modality against the classes truly present in that modality (Figure 2).

    Per video, class token c is taken as found when its head's probability on the video's grouped token
    (`p_a[c]` for the audio tokens, `p_v[c]` for the visual ones) is at least `threshold`, and as right when
    class c occurs in that modality's dense ground truth of the video. The counts of all videos are pooled:
    precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN), in percent (0 where
    undefined).

    Args:
        probs: [N, 25] the video-level probability of each class token of one modality
        truth: [N, 10, 25] that modality's dense ground truth (or [N, 25], per video)
    """
    found = np.asarray(probs) >= threshold  # [N, 25]
    present = np.asarray(truth, dtype=bool)
    if present.ndim == 3:
        present = present.any(axis=1)  # [N, 25]
    if found.shape != present.shape:
        raise ValueError(f"token_scores: probabilities {found.shape} against ground truth {present.shape}")
    tp = int(np.sum(found & present))
    fp, fn = int(np.sum(found & ~present)), int(np.sum(~found & present))
    return {
        "precision": 100.0 * tp / (tp + fp) if tp + fp else 0.0,
        "recall": 100.0 * tp / (tp + fn) if tp + fn else 0.0,
        "f1": 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    }


def class_token_record(predictions: dict[str, np.ndarray], split) -> dict[str, dict]:
    """MGN's validation record (metrics.jsonl `tokens`): precision, recall and F1 of its audio and visual class
    tokens (p_a, p_v) on a split with dense truth (Figure 2), read two ways: against each modality's dense truth
    (`audio`, `visual`), and against the video's weak labels, the labels MGN trains on (`weak`)."""
    audio, visual = predictions["audio_video"], predictions["visual_video"]
    return {
        "tokens": {
            "split": split.name,
            "definition": "per video: token c found when p >= 0.5, right when c is in that modality's truth",
            "audio": token_scores(audio, split.audio),
            "visual": token_scores(visual, split.visual),
            "weak": {
                "definition": "per video: token c found when p >= 0.5, right when c is among the video's weak labels",
                "audio": token_scores(audio, split.labels),
                "visual": token_scores(visual, split.labels),
            },
        }
    }
