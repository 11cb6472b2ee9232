"""Small synthetic videos (moving shapes and tones) for tests and demos of extraction and parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_synthetic_video(
    path: str | Path,
    seconds: float,
    with_audio: bool = True,
    fps: int = 12,
    width: int = 96,
    height: int = 64,
    sample_rate: int = 22050,
) -> Path:
    """Write an MP4 of ``seconds`` seconds: a square and a disc moving over a changing background, and
    (optionally) a tone whose pitch steps every second. Video is MPEG-4 part 2, audio AAC stereo.
    """
    import av

    path = Path(path)
    num_frames = round(seconds * fps)
    rows, cols = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if with_audio:
            audio = container.add_stream("aac", rate=sample_rate)
            audio.layout = "stereo"
        for index in range(num_frames):
            time = index / fps
            image = np.zeros((height, width, 3), dtype=np.uint8)
            image[..., 2] = int(60 + 40 * np.sin(time))  # slowly changing blue background
            x = int((time * 20) % (width - 16))
            image[10:26, x : x + 16] = (230, 40, 40)  # red square moving right
            cy, cx = height // 2 + int(12 * np.sin(2 * time)), width // 2 + int(25 * np.cos(time))
            image[(rows - cy) ** 2 + (cols - cx) ** 2 < 64] = (40, 220, 60)  # green disc on a loop
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            total = round(seconds * sample_rate)
            t = np.arange(total) / sample_rate
            pitch = 220.0 * 2 ** (np.floor(t) % 5 / 4)  # a new note every second
            tone = (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
            chunk = 1024
            for start in range(0, total, chunk):
                samples = np.repeat(tone[None, start : start + chunk], 2, axis=0)  # [2, n] planar stereo
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="stereo")
                frame.sample_rate = sample_rate
                frame.pts = start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path
