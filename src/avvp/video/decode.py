"""Decoding a video file with PyAV into what the feature networks need.

Frames: 8 per second; slot ``i`` takes the frame on screen at (i + 0.5) / 8 s (the middle of its
1/8-s slot), resized (no crop, aspect ratio not kept) to 224x224 for ResNet-152 and 112x112 for
R(2+1)D-18. Audio: the first audio stream, mixed to mono and resampled to 16 kHz float,
clipped to [-1, 1].

Length: a video of duration D seconds (the end of its last decoded frame) gives
L = max(1, floor(D + 0.05)) seconds, i.e. whole seconds rounded down, with 50 ms of slack for
containers that end a frame early. Time past the last frame repeats the last frame; audio short of
L seconds is zero-padded. A video without an audio track gets silent audio and a warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avvp.errors import AvvpError
from avvp.video import FRAMES_PER_SECOND, SAMPLE_RATE

log = logging.getLogger(__name__)

RESNET_SIZE = 224
R2PLUS1D_SIZE = 112
LENGTH_SLACK_S = 0.05  # a video this close below a whole second still counts that second
TRUNCATED_SLACK_S = 1.0  # decoded video may fall this far short of the declared duration before it is an error


@dataclass
class DecodedVideo:
    """A decoded video at the LLP rates."""

    path: Path
    num_seconds: int  # L: one feature row per second
    duration: float  # seconds of decoded video
    frames_224: np.ndarray  # [8L, 224, 224, 3] uint8 RGB
    frames_112: np.ndarray  # [8L, 112, 112, 3] uint8 RGB
    waveform: np.ndarray  # [L * 16000] float32 mono, zero where the audio is missing or short
    has_audio: bool


def decode_video(path: str | Path) -> DecodedVideo:
    """Decode ``path`` into 8-fps frames and 16-kHz mono audio; AvvpError (one line) if it cannot."""
    import av

    path = Path(path)
    if not path.is_file():
        raise AvvpError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise AvvpError(f"{path}: not a readable video file ({_reason(err)})") from err
    with container:
        if not container.streams.video:
            raise AvvpError(f"{path}: has no video stream")
        video_stream = container.streams.video[0]
        video_stream.thread_type = "AUTO"
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        declared = _declared_duration(container, video_stream)
        sampler, audio_chunks = _demux(path, container, video_stream, audio_stream)

    if sampler.last_time is None:
        raise AvvpError(f"{path}: no video frame could be decoded")
    duration = sampler.last_time + sampler.frame_step
    if declared is not None and duration < declared - TRUNCATED_SLACK_S:
        raise AvvpError(f"{path}: truncated: it declares {declared:.2f} s but only {duration:.2f} s decode")
    num_seconds = max(1, math.floor(duration + LENGTH_SLACK_S))

    frames_224, frames_112 = sampler.finish(num_seconds * FRAMES_PER_SECOND)
    has_audio = audio_stream is not None and bool(audio_chunks)
    if not has_audio:
        log.warning("%s: no audio track; using silent audio (the VGGish features are those of silence)", path)
    waveform = np.concatenate(audio_chunks) if audio_chunks else np.zeros(0, dtype=np.float32)
    needed = num_seconds * SAMPLE_RATE
    waveform = np.pad(waveform[:needed], (0, max(0, needed - len(waveform)))).astype(np.float32)
    np.clip(waveform, -1.0, 1.0, out=waveform)  # AAC can overshoot; 16-bit PCM (the VGGish reference input) cannot
    return DecodedVideo(path, num_seconds, duration, frames_224, frames_112, waveform, has_audio)


def _reason(err: Exception) -> str:
    """The short reason of a PyAV / OS error, on one line."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())


def _declared_duration(container, video_stream) -> float | None:
    """The duration the file declares for its video (stream first, then container), if any."""
    if video_stream.duration is not None and video_stream.time_base is not None:
        return float(video_stream.duration * video_stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


class _FrameSampler:
    """Picks, while frames stream in presentation order, the frame on screen at each slot time (i + 0.5) / 8.

    Only the picked frames are kept (as small RGB arrays), so long or high-resolution videos stay cheap.
    """

    def __init__(self) -> None:
        self.frames_224: list[np.ndarray] = []
        self.frames_112: list[np.ndarray] = []
        self.last_time: float | None = None
        self.frame_step = 1.0 / 25  # refined from the stream as frames arrive
        self._previous = None  # (frame, converted) of the frame on screen now

    def add(self, frame, time: float) -> None:
        """Take the next frame, starting at ``time`` seconds from the first frame."""
        if self.last_time is not None and time > self.last_time:
            self.frame_step = time - self.last_time
        if self._previous is None:
            self._previous = (frame, None)
        while self._next_slot_time() < time:  # slots before this frame show the previous one
            self._fill_slot()
        self._previous = (frame, None)
        self.last_time = time

    def finish(self, num_slots: int) -> tuple[np.ndarray, np.ndarray]:
        """Fill the slots up to ``num_slots`` with the last frame; [num_slots, 224|112, ..., 3] uint8."""
        while len(self.frames_224) < num_slots:
            self._fill_slot()
        return np.stack(self.frames_224[:num_slots]), np.stack(self.frames_112[:num_slots])

    def _next_slot_time(self) -> float:
        return (len(self.frames_224) + 0.5) / FRAMES_PER_SECOND

    def _fill_slot(self) -> None:
        frame, converted = self._previous
        if converted is None:
            converted = (
                frame.to_ndarray(width=RESNET_SIZE, height=RESNET_SIZE, format="rgb24", interpolation="AREA"),
                frame.to_ndarray(width=R2PLUS1D_SIZE, height=R2PLUS1D_SIZE, format="rgb24", interpolation="AREA"),
            )
            self._previous = (frame, converted)
        self.frames_224.append(converted[0])
        self.frames_112.append(converted[1])


def _demux(path: Path, container, video_stream, audio_stream) -> tuple[_FrameSampler, list[np.ndarray]]:
    """Decode the video (sampling 8-fps frames as they come) and the audio at 16 kHz mono."""
    import av

    sampler = _FrameSampler()
    audio_chunks: list[np.ndarray] = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if audio_stream else None
    start_time = None
    streams = [video_stream] + ([audio_stream] if audio_stream is not None else [])
    try:
        for packet in container.demux(*streams):
            for frame in packet.decode():
                if packet.stream.type == "video":
                    if frame.time is None:
                        continue
                    start_time = frame.time if start_time is None else start_time
                    sampler.add(frame, frame.time - start_time)
                else:
                    audio_chunks += [chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(frame)]
        if resampler is not None:
            audio_chunks += [chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(None)]
    except av.error.FFmpegError as err:
        at = f" at {sampler.last_time:.2f} s" if sampler.last_time is not None else ""
        raise AvvpError(f"{path}: decoding failed{at} ({_reason(err)})") from err
    return sampler, audio_chunks
