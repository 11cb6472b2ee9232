"""Parse one raw video in one call: decode it, extract its LLP features, run a checkpoint over its windows.

The windowing and the parse rule are `avvp.parse` (features in, events out); this module adds the video end:
decoding (`decode`), the feature networks (`backbones`) and the checkpoint (`avvp.checkpoint`).

    from avvp.video.parse import parse_video
    result = parse_video("clip.mp4", "mgn.safetensors", weights="weights/")
    for event in result.events:
        print(event.onset, event.offset, event.class_name, event.modality)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avvp.data.classes import CLASSES
from avvp.parse import DEFAULT_STRIDE, THRESHOLD, WINDOW_SECONDS, Event, VideoProbabilities
from avvp.video.weights import WeightSource

if TYPE_CHECKING:
    import torch


@dataclass
class VideoParse:
    """The parse of one video: what `avvp parse` writes to parse.json (`to_dict`), unrounded."""

    video: Path  # the parsed file
    duration: float  # seconds of decoded video
    num_seconds: int  # L: the seconds that were parsed
    has_audio: bool  # False: no audio track, parsed as silence
    random_weights: bool  # the feature networks were untrained: not a real parse
    model: str  # the registered model's name, e.g. 'mgn'
    checkpoint: str  # the checkpoint, as given
    checkpoint_format: str  # 'avvp' or the authors' format, as `load_model` reports it
    stride: int  # seconds between the starts of successive windows
    window_starts: list[int]  # start second of every 10-s window
    threshold: float  # probability threshold of the parse rule
    events: list[Event]  # sorted by onset, then class
    probabilities: VideoProbabilities  # per second [L, 25] and per video [25], combined over windows

    def to_dict(self) -> dict[str, Any]:
        """The parse.json record: probabilities rounded to 4 decimals, the duration to 3."""
        probs = self.probabilities
        return {
            "video": str(self.video),
            "duration": round(self.duration, 3),
            "num_seconds": self.num_seconds,
            "has_audio": self.has_audio,
            "random_weights": self.random_weights,
            "model": {"name": self.model, "checkpoint": self.checkpoint, "format": self.checkpoint_format},
            "windows": {"length": WINDOW_SECONDS, "stride": self.stride, "starts": self.window_starts},
            "threshold": self.threshold,
            "events": [event.to_dict() for event in self.events],
            "video_probabilities": {
                name: {c: round(float(p), 4) for c, p in zip(CLASSES, values)}
                for name, values in (("audio-visual", probs.p_av), ("audio", probs.p_a), ("visual", probs.p_v))
            },
            "segment_probabilities": {
                name: [[round(float(p), 4) for p in row] for row in values]
                for name, values in (("audio", probs.audio), ("visual", probs.visual), ("video_filter", probs.gate))
            },
        }


def parse_video(
    video: str | Path,
    checkpoint: str | Path,
    *,
    weights: WeightSource | str | Path,
    device: torch.device | str = "cpu",
    stride: int = DEFAULT_STRIDE,
    threshold: float = THRESHOLD,
    unimodal_assign: str | None = None,
    crossmodal_assign: str | None = None,
) -> VideoParse:
    """Which events are heard, seen or both, and when, in a video of any length.

    Args:
        video: the video file (decoded with PyAV; `avvp[video]`).
        checkpoint: an avvp checkpoint or an authors' .pt file.
        weights: the feature networks' weights: a `WeightSource`, or a folder of weight files
            (see `avvp.video.weights`).
        device: where the feature networks and the model run.
        stride: seconds between the starts of successive 10-s windows.
        threshold: probability threshold of the parse rule.
        unimodal_assign, crossmodal_assign: MGN assignment for an authors' checkpoint, which does not record it.

    Raises:
        AvvpError: an unreadable video, checkpoint or weight file (one line).
    """
    from avvp.checkpoint import load_model
    from avvp.parse import build_events, predict_windows
    from avvp.video.backbones import FeatureExtractor
    from avvp.video.decode import decode_video

    if stride < 1:
        raise ValueError(f"stride {stride}: must be at least 1 second")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold {threshold}: must be between 0 and 1")
    source = weights if isinstance(weights, WeightSource) else WeightSource(folder=Path(weights))
    model, info = load_model(
        checkpoint, unimodal_assign=unimodal_assign, crossmodal_assign=crossmodal_assign, map_location=device
    )
    decoded = decode_video(video)
    features = FeatureExtractor(source, device=device)(decoded)
    starts, probs = predict_windows(
        model,
        features.audio,
        features.res152,
        features.r2plus1d,
        device=device,
        stride=stride,
        where=f"scores of {checkpoint} on {video}",
    )
    return VideoParse(
        video=Path(video),
        duration=decoded.duration,
        num_seconds=decoded.num_seconds,
        has_audio=decoded.has_audio,
        random_weights=source.random,
        model=info["model"],
        checkpoint=str(checkpoint),
        checkpoint_format=info["format"],
        stride=stride,
        window_starts=starts,
        threshold=threshold,
        events=build_events(probs, threshold=threshold),
        probabilities=probs,
    )
