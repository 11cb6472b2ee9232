"""Reader for pre-extracted features in the official folder layout.

    DIR/vggish/<video id>.npy       float32 (10, 128)    VGGish, one per second of audio
    DIR/res152/<video id>.npy       float32 (80, 2048)   ResNet-152, 8 frames per second
    DIR/r2plus1d_18/<video id>.npy  float32 (10, 512)    R(2+1)D-18, one per second

Every file is checked (present, shape, dtype, finite) and a problem is reported as one error naming the video
and the folder, so a bad file never reaches a model as garbage.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from avvp.data.sniff import NPY, file_kind
from avvp.errors import AvvpError

# name -> (folder, per-video shape)
FEATURE_DIRS: dict[str, tuple[str, tuple[int, int]]] = {
    "audio": ("vggish", (10, 128)),
    "res152": ("res152", (80, 2048)),
    "r2plus1d": ("r2plus1d_18", (10, 512)),
}
FRAMES_PER_SECOND = 8  # res152 frames per one-second segment

# np.load parses a .npy header with ast.literal_eval, and CPython 3.11 keeps the AST builder's recursion counter
# in one place for all threads (gh-106905): parallel readers failed at random with "SystemError: AST constructor
# recursion depth mismatch". Headers are parsed one at a time; the values are copied outside the lock.
_HEADER_LOCK = threading.Lock()
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


@dataclass
class Features:
    """The three feature arrays of N videos, rows in the order of the requested video ids."""

    audio: np.ndarray  # [N, 10, 128] float32
    res152: np.ndarray  # [N, 80, 2048] float32, or [N, 10, 2048] when averaged per second (`pooled=True`)
    r2plus1d: np.ndarray  # [N, 10, 512] float32

    def __len__(self) -> int:
        return len(self.audio)


def _expected(shape: tuple[int, int]) -> str:
    return f"one float32 {shape} array saved with np.save"


def _load_npy(path: Path, mmap_mode: str | None) -> np.ndarray:
    """One .npy file as an array (memory-mapped with `mmap_mode`), its header parsed under `_HEADER_LOCK` and
    its values read outside it; ValueError for a file that is not a complete .npy of plain numbers."""
    with open(path, "rb") as handle:
        with _HEADER_LOCK:
            version = npy_format.read_magic(handle)
            if version not in _HEADER_READERS:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
            shape, fortran_order, dtype = _HEADER_READERS[version](handle)
        if dtype.hasobject:
            raise ValueError("it holds Python objects")
        order = "F" if fortran_order else "C"
        count = math.prod(shape)
        if mmap_mode is not None:
            return np.memmap(handle, dtype, mmap_mode, offset=handle.tell(), shape=shape, order=order)
        values = np.fromfile(handle, dtype, count)
    if values.size != count:
        raise ValueError(f"the file is truncated: {values.size} of {count} values")
    return values.reshape(shape, order=order)


def pool_res152(res152: np.ndarray) -> np.ndarray:
    """Average the 8 ResNet-152 frames of each second: [..., 80, 2048] -> [..., 10, 2048] (same model input)."""
    *lead, frames, dim = res152.shape
    return res152.reshape(*lead, frames // FRAMES_PER_SECOND, FRAMES_PER_SECOND, dim).mean(axis=-2)


class FeatureFolder:
    """A features folder in the official layout; reads and validates the features of listed videos."""

    def __init__(self, root: str | Path, *, workers: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise AvvpError(f"features folder {self.root} does not exist")
        missing = [folder for folder, _ in FEATURE_DIRS.values() if not (self.root / folder).is_dir()]
        if missing:
            raise AvvpError(
                f"features folder {self.root} has no {', '.join(m + '/' for m in missing)} "
                f"(expected {', '.join(folder + '/' for folder, _ in FEATURE_DIRS.values())})"
            )
        self.workers = workers or min(8, 2 * (os.cpu_count() or 1))

    def path(self, name: str, video_id: str) -> Path:
        """The file holding feature `name` ("audio", "res152", "r2plus1d") of one video."""
        return self.root / FEATURE_DIRS[name][0] / f"{video_id}.npy"

    def read(self, name: str, video_id: str) -> np.ndarray:
        """One video's feature array, validated (file present, shape, float32, finite)."""
        array, where = self._open(name, video_id)
        if not np.isfinite(array).all():
            raise AvvpError(f"{where}: holds NaN or infinity")
        return array

    def check_present(self, video_ids: Sequence[str]) -> None:
        """Every feature file of `video_ids` is there with its shape and dtype, read from the .npy headers only
        (the values are not read: see `check` for that); raises AvvpError on the first problem."""
        for video_id in video_ids:
            for name in FEATURE_DIRS:
                self._open(name, video_id, mmap_mode="r")

    def _open(self, name: str, video_id: str, *, mmap_mode: str | None = None) -> tuple[np.ndarray, str]:
        """One video's feature array (memory-mapped with `mmap_mode`), its shape and dtype checked; and the
        `where` that errors about it start with."""
        folder, shape = FEATURE_DIRS[name]
        path = self.path(name, video_id)
        where = f"video {video_id}: {self.root / folder}/{video_id}.npy"
        try:
            array = _load_npy(path, mmap_mode)
        except FileNotFoundError:
            raise AvvpError(f"{where}: file not found") from None
        except (OSError, ValueError, EOFError) as err:
            kind = file_kind(path)
            if kind == NPY:  # truncated, or an object array
                raise AvvpError(f"{where}: not a readable .npy file ({err})") from err
            raise AvvpError(f"{where}: not a readable .npy file: it is {kind}; expected {_expected(shape)}") from err
        if array.shape != shape:
            raise AvvpError(f"{where}: shape {array.shape}, expected {shape}")
        if array.dtype != np.float32:
            raise AvvpError(f"{where}: dtype {array.dtype}, expected float32")
        return array, where

    def read_video(self, video_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(audio [10,128], res152 [80,2048], r2plus1d [10,512]) of one video, validated."""
        return self.read("audio", video_id), self.read("res152", video_id), self.read("r2plus1d", video_id)

    def load(
        self, video_ids: Sequence[str], *, pooled: bool = False, progress: bool = False, desc: str | None = None
    ) -> Features:
        """Features of `video_ids` stacked in that order; `pooled` averages res152 per second to [N, 10, 2048].

        `progress` shows a progress bar labelled `desc`.
        """
        from avvp.utils import progress_bar

        count = len(video_ids)
        res152_shape = (10, 2048) if pooled else FEATURE_DIRS["res152"][1]
        features = Features(
            audio=np.empty((count, *FEATURE_DIRS["audio"][1]), np.float32),
            res152=np.empty((count, *res152_shape), np.float32),
            r2plus1d=np.empty((count, *FEATURE_DIRS["r2plus1d"][1]), np.float32),
        )

        def fill(row: int) -> None:
            audio, res152, r2plus1d = self.read_video(video_ids[row])
            features.audio[row] = audio
            features.res152[row] = pool_res152(res152) if pooled else res152
            features.r2plus1d[row] = r2plus1d

        bar = progress_bar(progress=progress, total=count, desc=desc or f"features {self.root.name}", unit="video")
        with bar, ThreadPoolExecutor(max_workers=self.workers) as pool:
            for _ in pool.map(fill, range(count)):  # re-raises the first error in order
                bar.update()
        return features

    def check(self, video_ids: Sequence[str], *, progress: bool = False) -> None:
        """Validate every feature file of `video_ids` without keeping them; raises AvvpError on the first problem."""
        from avvp.utils import progress_bar

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for _ in progress_bar(
                pool.map(self.read_video, video_ids),
                progress=progress,
                total=len(video_ids),
                desc=f"check {self.root.name}",
                unit="video",
            ):
                pass

    def batches(self, video_ids: Sequence[str], batch_size: int, *, pooled: bool = False) -> Iterator[Features]:
        """Features of `video_ids` in consecutive batches of `batch_size` videos (the last may be smaller)."""
        if batch_size < 1:
            raise AvvpError(f"batch size must be at least 1, not {batch_size}")
        for start in range(0, len(video_ids), batch_size):
            yield self.load(video_ids[start : start + batch_size], pooled=pooled)


def load_features(
    root: str | Path, video_ids: Sequence[str], *, pooled: bool = False, progress: bool = False
) -> Features:
    """Features of `video_ids` from a folder in the official layout, validated (see `FeatureFolder`)."""
    return FeatureFolder(root).load(video_ids, pooled=pooled, progress=progress)
