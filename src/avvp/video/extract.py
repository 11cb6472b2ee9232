"""Feature extraction for a set of videos into the official LLP layout.

FEATS/vggish/<id>.npy [L, 128], FEATS/res152/<id>.npy [8L, 2048], FEATS/r2plus1d_18/<id>.npy [L, 512],
float32, where <id> is the video file's stem. A video whose three files all exist is skipped. Videos are
decoded in a thread pool ahead of the networks; a video that fails is reported and leaves none of its files.
Features from random weights are marked by a RANDOM_WEIGHTS.txt file in FEATS, and the two never mix.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avvp.errors import AvvpError
from avvp.video import FEATURE_DIRS
from avvp.video.weights import RANDOM_WEIGHTS_WARNING, WeightSource

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts"}
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"


@dataclass
class ExtractReport:
    """What an extraction run did."""

    done: list[str] = field(default_factory=list)  # ids extracted now
    skipped: list[str] = field(default_factory=list)  # ids whose features already existed
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (video, one-line reason)


def list_videos(videos: str | Path) -> list[Path]:
    """One video file, the videos of a folder (by suffix, sorted), or a list file (one path a line, relative to it)."""
    videos = Path(videos)
    if videos.is_dir():
        found = sorted(p for p in videos.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise AvvpError(f"{videos}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
        return found
    if not videos.is_file():
        raise AvvpError(f"{videos}: neither a video, a folder of videos nor a list file")
    if videos.suffix.lower() in VIDEO_SUFFIXES:
        return [videos]
    paths = []
    for line in videos.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line)
            paths.append(path if path.is_absolute() else videos.parent / path)
    if not paths:
        raise AvvpError(f"{videos}: the video list is empty")
    return paths


def feature_paths(out: Path, video_id: str) -> dict[str, Path]:
    """The three feature files of a video, keyed audio / res152 / r2plus1d."""
    return {key: out / folder / f"{video_id}.npy" for key, folder in FEATURE_DIRS.items()}


def check_marker(out: Path, random_weights: bool) -> None:
    """Refuse to mix random-weight and real features in one folder; mark a random-weight folder."""
    marker = out / RANDOM_MARKER
    has_features = any(
        (out / folder).is_dir() and any((out / folder).glob("*.npy")) for folder in FEATURE_DIRS.values()
    )
    if random_weights and has_features and not marker.exists():
        raise AvvpError(f"{out}: holds features from real weights; write random-weight features to another --out")
    if not random_weights and marker.exists():
        raise AvvpError(f"{out}: holds random-weight features ({RANDOM_MARKER}); write real features to another --out")
    if random_weights:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(RANDOM_WEIGHTS_WARNING + "\n", encoding="utf-8")


def write_features(out: Path, video_id: str, features) -> None:
    """Write a video's three files atomically as a group: all of them, or none on failure."""
    targets = feature_paths(out, video_id)
    temps: dict[str, Path] = {}
    replaced: list[Path] = []
    try:
        for key, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{video_id}.", suffix=".npy.tmp", dir=target.parent)
            temps[key] = Path(temp)
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, np.ascontiguousarray(getattr(features, key), dtype=np.float32))
        for key, target in targets.items():
            os.replace(temps[key], target)
            replaced.append(target)
    except BaseException:
        for path in list(temps.values()) + replaced:
            path.unlink(missing_ok=True)
        raise


def extract_videos(
    videos: list[Path], out: Path, source: WeightSource, device=None, workers: int = 2, progress: bool = True
) -> ExtractReport:
    """Extract features of ``videos`` into ``out``; bad videos are reported, not raised."""
    from avvp.utils import progress_bar
    from avvp.video.backbones import FeatureExtractor
    from avvp.video.decode import decode_video

    check_marker(out, source.random)
    report = ExtractReport()
    todo = []
    for video in videos:
        if all(path.is_file() for path in feature_paths(out, video.stem).values()):
            report.skipped.append(video.stem)
        else:
            todo.append(video)
    if not todo:
        return report
    extractor = FeatureExtractor(source, device=device)
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        progress_bar(progress=progress, total=len(todo), unit="video", desc="extract") as bar,
    ):
        pending: deque = deque()
        queue = iter(todo)
        for video in queue:  # keep `workers` decodes in flight ahead of the networks
            pending.append((video, pool.submit(decode_video, video)))
            if len(pending) >= max(1, workers):
                break
        while pending:
            video, future = pending.popleft()
            next_video = next(queue, None)
            if next_video is not None:
                pending.append((next_video, pool.submit(decode_video, next_video)))
            try:
                write_features(out, video.stem, extractor(future.result()))
                report.done.append(video.stem)
            except AvvpError as err:
                report.failed.append((video, str(err)))
            except Exception as err:  # noqa: BLE001 - one bad video must not stop the others
                report.failed.append((video, f"{video}: {type(err).__name__}: {' '.join(str(err).split())}"))
            bar.update(1)
    return report
