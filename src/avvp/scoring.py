"""Score a predictions file (PRED.npz) against a split with the official metrics.

PRED.npz holds `filenames` (N,) strings, `audio` and `visual` (N, 10, 25) segment probabilities (or 0/1) and
optionally `video` (N, 25) video-level probabilities, all in [0, 1]; rows may come in any order. Every problem
with the file is one clear error naming the file and what is wrong.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from avvp.data.annotations import Split
from avvp.data.classes import NUM_CLASSES, NUM_SEGMENTS
from avvp.data.sniff import NPZ, file_kind
from avvp.errors import AvvpError
from avvp.metrics import Scores, evaluate, parse_predictions

SEGMENT_KEYS = ("audio", "visual")  # required, [N, 10, 25]
VIDEO_KEY = "video"  # optional, [N, 25]
# Per-video shapes of the arrays scored (`predict` also writes audio_video and visual_video, p_a and p_v).
PER_VIDEO_SHAPES = {
    "audio": (NUM_SEGMENTS, NUM_CLASSES),
    "visual": (NUM_SEGMENTS, NUM_CLASSES),
    "video": (NUM_CLASSES,),
}
_LAYOUT = "np.savez with filenames (N,), audio and visual (N, 10, 25), optionally video (N, 25)"
_LISTED = 5  # names spelled out in an error about missing or unknown videos


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")


def read_predictions(path: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read PRED.npz as it is (rows in file order), validated: (filenames, {"audio", "visual"[, "video"]}).

    Any other kind of file, a missing key, an object array, a wrong shape, NaN or a value outside [0, 1] is one
    AvvpError naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise AvvpError(f"{path}: predictions file not found")
    kind = file_kind(path)
    if kind != NPZ:
        raise AvvpError(f"{path} is {kind}, not a .npz archive; expected {_LAYOUT}")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing_keys = [key for key in ("filenames", *SEGMENT_KEYS) if key not in keys]
            if missing_keys:
                raise AvvpError(
                    f"{path}: missing key(s) {', '.join(missing_keys)} (has {', '.join(sorted(keys)) or 'none'}); "
                    f"expected {_LAYOUT}"
                )
            for key in ("filenames", *SEGMENT_KEYS, VIDEO_KEY):
                if key in keys:
                    try:
                        arrays[key] = npz[key]
                    except ValueError as err:  # object arrays need pickle, which is never allowed
                        wanted = "a string array (np.str_)" if key == "filenames" else "a float array"
                        raise AvvpError(
                            f"{path}: {key} is an object array, which avvp never unpickles; store {key} as {wanted}"
                        ) from err
    except AvvpError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise AvvpError(f"{path}: not a readable .npz file ({err})") from None

    names = arrays.pop("filenames")
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise AvvpError(f"{path}: filenames must be a 1-D string array, got shape {names.shape} dtype {names.dtype}")
    try:
        names = [name.decode() if isinstance(name, bytes) else str(name) for name in names.tolist()]
    except UnicodeDecodeError as err:
        raise AvvpError(f"{path}: filenames holds bytes that are not UTF-8 text ({err.reason})") from None
    check_predictions(arrays, names, str(path))
    return names, arrays


def check_predictions(arrays: dict[str, np.ndarray], names: list[str], where: str) -> None:
    """Check prediction arrays of the videos `names`: shapes (of the keys `PER_VIDEO_SHAPES` knows), numeric,
    finite, and in [0, 1] (probabilities or 0/1); an AvvpError starting with `where` names the key otherwise."""
    count = len(names)
    for key, array in arrays.items():
        expected = (count, *PER_VIDEO_SHAPES[key]) if key in PER_VIDEO_SHAPES else array.shape
        if array.shape != expected or array.shape[:1] != (count,):
            raise AvvpError(f"{where}: {key} has shape {array.shape}, expected {expected} (N = {count} filenames)")
        if array.dtype.kind not in "fiub":
            raise AvvpError(f"{where}: {key} has dtype {array.dtype}, expected float probabilities or 0/1")
        if array.dtype.kind == "b" or count == 0:
            continue
        rows = array.reshape(count, -1)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad_rows = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            raise AvvpError(
                f"{where}: {key} holds NaN or infinity for {len(bad_rows)} video(s), "
                f"e.g. {_names([names[row] for row in bad_rows])}"
            )
        low, high = array.min(), array.max()
        if low < 0 or high > 1:
            bad_rows = np.flatnonzero(((rows < 0) | (rows > 1)).any(axis=1))
            raise AvvpError(
                f"{where}: {key} holds values in [{low:.4g}, {high:.4g}], outside [0, 1], for {len(bad_rows)} "
                f"video(s), e.g. {_names([names[row] for row in bad_rows])}; expected probabilities or 0/1 "
                "(logits? apply a sigmoid first)"
            )


def load_predictions(path: str | Path, filenames: list[str], *, split_name: str = "") -> dict[str, np.ndarray]:
    """Read PRED.npz and return its arrays in the order of `filenames` (the split's videos), validated.

    Returns:
        {"audio": [N, 10, 25], "visual": [N, 10, 25]} float arrays, plus "video" [N, 25] when the file has it.
    """
    path = Path(path)
    names, arrays = read_predictions(path)
    row_of: dict[str, int] = {}
    duplicates = []
    for row, name in enumerate(names):
        if name in row_of:
            duplicates.append(name)
        row_of[name] = row
    if duplicates:
        raise AvvpError(f"{path}: {len(duplicates)} video(s) listed twice: {_names(duplicates)}")
    split_label = f"the {split_name} split" if split_name else "the split"
    split_names = set(filenames)
    unknown = [name for name in names if name not in split_names]
    if unknown:
        raise AvvpError(f"{path}: {len(unknown)} video(s) not in {split_label}: {_names(unknown)}")
    missing = [name for name in filenames if name not in row_of]
    if missing:
        raise AvvpError(f"{path}: {len(missing)} video(s) of {split_label} have no predictions: {_names(missing)}")
    order = np.fromiter((row_of[name] for name in filenames), dtype=np.int64, count=len(filenames))
    return {key: array[order] for key, array in arrays.items()}


def score_predictions(path: str | Path, split: Split, *, threshold: float = 0.5) -> Scores:
    """Score PRED.npz against a val/test split: the official parse, then the official metrics."""
    if split.audio is None or split.visual is None:
        raise AvvpError(f"split {split.name!r} has no dense ground truth; score val or test")
    predictions = load_predictions(path, split.filenames, split_name=split.name)
    pred_audio, pred_visual = parse_predictions(
        predictions["audio"], predictions["visual"], predictions.get(VIDEO_KEY), threshold
    )
    return evaluate(pred_audio, pred_visual, split.audio, split.visual)
