"""Parsing a video of any length with a model trained on 10-second clips: windows in, events out.

No decoding happens here: everything works on LLP features of an L-second video (audio [L, 128],
res152 [8L, 2048], r2plus1d [L, 512]) and on model probabilities, so it is testable without video.

Conventions (documented in docs/video.md):
- Windows of 10 s every ``stride`` seconds (default 5), the last one ending at the video's end, so every
  second is covered by one or two windows. A video shorter than 10 s is one window, padded by repeating
  its last second; the padded seconds' outputs are dropped.
- Segment probabilities (audio, visual) are averaged over the windows covering each second.
- The video-level filter (the official parse: a segment counts only if the video-level audio-visual
  probability p_av >= 0.5) is applied per second with the MAX of p_av over the windows covering that
  second: a class present in any window that sees this second may be parsed there. The video-level
  probabilities reported for the whole video are the max over all windows.
- Each (second, class) is labelled audio (heard, not seen), visual (seen, not heard), audio-visual (both)
  or nothing; an event is a maximal run of seconds with the same label. Its confidence is the mean over
  its seconds of the fuzzy AND of the conditions behind it: min(P_a, p_av) for audio, min(P_v, p_av) for
  visual, min(P_a, P_v, p_av) for audio-visual (so it is >= 0.5 like every condition).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avvp.data.classes import CLASSES, NUM_SEGMENTS

WINDOW_SECONDS = NUM_SEGMENTS  # the models see 10 one-second segments
DEFAULT_STRIDE = 5
THRESHOLD = 0.5
MODALITIES = ("audio", "visual", "audio-visual")


@dataclass
class VideoProbabilities:
    """Model probabilities for an L-second video, combined over windows."""

    audio: np.ndarray  # [L, 25] audio segment probability P_a (mean over covering windows)
    visual: np.ndarray  # [L, 25] visual segment probability P_v (mean over covering windows)
    gate: np.ndarray  # [L, 25] video-level p_av filter per second (max over covering windows)
    p_av: np.ndarray  # [25] audio-visual video-level probability, max over windows
    p_a: np.ndarray  # [25] audio video-level probability, max over windows
    p_v: np.ndarray  # [25] visual video-level probability, max over windows


@dataclass
class Event:
    """One parsed event: a class, heard and/or seen, from ``onset`` to ``offset`` seconds."""

    class_name: str
    modality: str  # "audio" (heard only), "visual" (seen only) or "audio-visual"
    onset: int  # seconds
    offset: int  # seconds, exclusive
    confidence: float

    def to_dict(self) -> dict:
        return {
            "class": self.class_name,
            "modality": self.modality,
            "onset": self.onset,
            "offset": self.offset,
            "confidence": round(float(self.confidence), 4),
        }


def window_starts(num_seconds: int, window: int = WINDOW_SECONDS, stride: int = DEFAULT_STRIDE) -> list[int]:
    """Start seconds of the windows over an L-second video: 0, stride, ..., and one ending at L."""
    if num_seconds < 1 or stride < 1:
        raise ValueError(f"num_seconds and stride must be positive, got {num_seconds} and {stride}")
    if num_seconds <= window:
        return [0]
    starts = list(range(0, num_seconds - window + 1, stride))
    if starts[-1] != num_seconds - window:
        starts.append(num_seconds - window)
    return starts


def window_features(
    audio: np.ndarray, res152: np.ndarray, r2plus1d: np.ndarray, starts: list[int], window: int = WINDOW_SECONDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut features into windows: audio [W, 10, 128], res152 [W, 80, 2048], r2plus1d [W, 10, 512].

    Short videos are padded by repeating the last second (frames included) up to ``window`` seconds.
    """
    num_seconds = len(audio)
    frames_per_second = len(res152) // num_seconds
    if len(res152) != frames_per_second * num_seconds or len(r2plus1d) != num_seconds:
        raise ValueError(f"features disagree on length: {len(audio)}, {len(res152)} frames, {len(r2plus1d)}")
    if num_seconds < window:
        pad = window - num_seconds
        audio = np.concatenate([audio, np.repeat(audio[-1:], pad, axis=0)])
        last_second = res152[-frames_per_second:]
        res152 = np.concatenate([res152] + [last_second] * pad)
        r2plus1d = np.concatenate([r2plus1d, np.repeat(r2plus1d[-1:], pad, axis=0)])
    audio_windows = np.stack([audio[s : s + window] for s in starts])
    res152_windows = np.stack([res152[s * frames_per_second : (s + window) * frames_per_second] for s in starts])
    r2plus1d_windows = np.stack([r2plus1d[s : s + window] for s in starts])
    return audio_windows, res152_windows, r2plus1d_windows


def combine_windows(
    starts: list[int],
    num_seconds: int,
    segment_audio: np.ndarray,
    segment_visual: np.ndarray,
    video: np.ndarray,
    audio_video: np.ndarray,
    visual_video: np.ndarray,
) -> VideoProbabilities:
    """Merge per-window outputs ([W, 10, 25] segments, [W, 25] video level) into one L-second video."""
    window = segment_audio.shape[1]
    num_classes = segment_audio.shape[2]
    audio_sum = np.zeros((num_seconds, num_classes))
    visual_sum = np.zeros((num_seconds, num_classes))
    covered = np.zeros((num_seconds, 1))
    gate = np.zeros((num_seconds, num_classes))
    for index, start in enumerate(starts):
        stop = min(start + window, num_seconds)  # seconds past the video's end are padding: ignored
        length = stop - start
        audio_sum[start:stop] += segment_audio[index, :length]
        visual_sum[start:stop] += segment_visual[index, :length]
        covered[start:stop] += 1
        gate[start:stop] = np.maximum(gate[start:stop], video[index])
    if (covered == 0).any():
        raise ValueError("the windows do not cover every second of the video")
    return VideoProbabilities(
        audio=(audio_sum / covered).astype(np.float32),
        visual=(visual_sum / covered).astype(np.float32),
        gate=gate.astype(np.float32),
        p_av=video.max(axis=0).astype(np.float32),
        p_a=audio_video.max(axis=0).astype(np.float32),
        p_v=visual_video.max(axis=0).astype(np.float32),
    )


def parse_masks(probs: VideoProbabilities, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Spec section 5 per second: audio = P_a >= t AND p_av >= t; visual likewise. Two [L, 25] bool arrays."""
    present = probs.gate >= threshold
    return (probs.audio >= threshold) & present, (probs.visual >= threshold) & present


def build_events(
    probs: VideoProbabilities, threshold: float = THRESHOLD, class_names: tuple[str, ...] = CLASSES
) -> list[Event]:
    """Events (maximal runs of the same modality label per class), sorted by onset then class index."""
    audio_mask, visual_mask = parse_masks(probs, threshold)
    # label per (second, class): 0 none, 1 audio only, 2 visual only, 3 audio-visual
    labels = audio_mask.astype(np.int8) + 2 * visual_mask.astype(np.int8)  # [L, 25]
    confidence = np.stack(
        [
            np.zeros_like(probs.audio),
            np.minimum(probs.audio, probs.gate),
            np.minimum(probs.visual, probs.gate),
            np.minimum(np.minimum(probs.audio, probs.visual), probs.gate),
        ]
    )  # [4, L, 25]
    events = []
    num_seconds = labels.shape[0]
    for class_index, class_name in enumerate(class_names):
        column = labels[:, class_index]
        start = 0
        for second in range(1, num_seconds + 1):
            if second == num_seconds or column[second] != column[start]:
                label = int(column[start])
                if label:
                    run_confidence = confidence[label, start:second, class_index].mean()
                    events.append(Event(class_name, MODALITIES[label - 1], start, second, float(run_confidence)))
                start = second
    order = {name: i for i, name in enumerate(class_names)}
    return sorted(events, key=lambda e: (e.onset, order[e.class_name], e.modality))


def predict_windows(
    model,
    audio,
    res152,
    r2plus1d,
    device=None,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = 32,
    where: str = "the model's scores",
):
    """Run ``model`` over the windows of one video's features and combine them (eval mode, no gradients); scores
    outside the one rule (`avvp.scoring.check_scores`) are an AvvpError starting with `where`."""
    from avvp.data.features import Features
    from avvp.inference import predict

    num_seconds = len(audio)
    starts = window_starts(num_seconds, stride=stride)
    windows = Features(*window_features(audio, res152, r2plus1d, starts))
    names = [f"the window at {start} s" for start in starts]
    merged = predict(model, windows, batch_size=batch_size, device=device or "cpu", names=names, where=where)
    return starts, combine_windows(
        starts,
        num_seconds,
        merged["audio"],
        merged["visual"],
        merged["video"],
        merged["audio_video"],
        merged["visual_video"],
    )
