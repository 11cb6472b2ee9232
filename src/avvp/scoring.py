"""Score a predictions file (PRED.npz) against a split with the official metrics.

PRED.npz holds `filenames` (N,) strings, `audio` and `visual` (N, 10, 25) segment scores (or 0/1) and optionally
`video` (N, 25) video-level scores, all finite and in [0, 2] (`check_scores`: MGN's segment scores
reach up to 2p, HAN's p_av up to 2); rows may come in any order. Every problem with the file is one clear error
naming the file and what is wrong.
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
# The one rule for model scores, wherever they are read or made (predict, evaluate, score, train, demo, parse, plots):
# finite and in [0, SCORE_MAX]. Not every score is a probability: an MGN segment score is p * (1 + softmax over time)
# with the authors' soft map, in [p, 2p), and HAN's p_av sums attention-weighted probabilities over the two
# modalities, in [0, 2] (docs/architecture.md, "Score ranges"). Negative values (logits), values above 2
# (percentages, most logits), NaN and infinity can only be mistakes.
SCORE_MAX = 2.0
_LAYOUT = "np.savez with filenames (N,), audio and visual (N, 10, 25), optionally video (N, 25)"
_LISTED = 5  # names spelled out in an error about missing or unknown videos


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")


def read_predictions(path: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read PRED.npz as it is (rows in file order), validated: (filenames, {"audio", "visual"[, "video"]}).

    Any other kind of file, a missing key, an object array, a wrong shape, NaN or a value outside [0, 2]
    (`check_scores`) is one AvvpError naming the file and the key.
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
    """Check prediction arrays of the videos `names`: shapes (of the keys `PER_VIDEO_SHAPES` knows), numeric, and
    the one rule for model scores (`check_scores`); an AvvpError starting with `where` names the key
    otherwise."""
    count = len(names)
    for key, array in arrays.items():
        expected = (count, *PER_VIDEO_SHAPES[key]) if key in PER_VIDEO_SHAPES else array.shape
        if array.shape != expected or array.shape[:1] != (count,):
            raise AvvpError(f"{where}: {key} has shape {array.shape}, expected {expected} (N = {count} filenames)")
        if array.dtype.kind not in "fiub":
            raise AvvpError(f"{where}: {key} has dtype {array.dtype}, expected float scores or 0/1")
    check_scores(arrays, names, where)


def check_scores(arrays: dict[str, np.ndarray], names: list[str], where: str) -> None:
    """The one rule for model scores: every value finite and in [0, SCORE_MAX] (0/1 and booleans included).

    Args:
        arrays: key -> [N, ...] numeric array (any keys).
        names: the N videos, named in the error.
        where: what the arrays are (a file, a checkpoint's predictions), the error's first words.
    """
    for key, array in arrays.items():
        if array.dtype.kind == "b" or array.size == 0:
            continue
        rows = array.reshape(len(names), -1)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad_rows = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            raise AvvpError(f"{where}: {key} holds NaN or infinity for {_rows(names, bad_rows)}")
        low, high = array.min(), array.max()
        if low < 0 or high > SCORE_MAX:
            bad_rows = np.flatnonzero(((rows < 0) | (rows > SCORE_MAX)).any(axis=1))
            hint = "logits? apply a sigmoid first" if low < 0 else "percentages? logits? expected fractions"
            raise AvvpError(
                f"{where}: {key} holds values in [{low:.4g}, {high:.4g}], outside [0, {SCORE_MAX:g}], for "
                f"{_rows(names, bad_rows)}; expected model scores: probabilities, 0/1, or MGN segment scores up to "
                f"2p ({hint})"
            )


def _rows(names: list[str], rows: np.ndarray) -> str:
    return f"{len(rows)} video(s), e.g. {_names([names[row] for row in rows])}"


def load_predictions(path: str | Path, filenames: list[str], *, split_name: str = "") -> dict[str, np.ndarray]:
    """Read PRED.npz and return its arrays in the order of `filenames` (the split's videos), validated.

    Returns:
        {"audio": [N, 10, 25], "visual": [N, 10, 25]} float arrays, plus "video" [N, 25] when the file has it.
    """
    names, arrays = read_predictions(path)
    return align_predictions(names, arrays, filenames, where=str(path), split_name=split_name)


def align_predictions(
    names: list[str], arrays: dict[str, np.ndarray], filenames: list[str], *, where: str, split_name: str = ""
) -> dict[str, np.ndarray]:
    """Prediction arrays whose rows are the videos `names`, reordered to `filenames` (a split's videos): every
    video of the split must be there once, and no other; `where` names the predictions in the errors."""
    row_of: dict[str, int] = {}
    duplicates = []
    for row, name in enumerate(names):
        if name in row_of:
            duplicates.append(name)
        row_of[name] = row
    if duplicates:
        raise AvvpError(f"{where}: {len(duplicates)} video(s) listed twice: {_names(duplicates)}")
    split_label = f"the {split_name} split" if split_name else "the split"
    split_names = set(filenames)
    unknown = [name for name in names if name not in split_names]
    if unknown:
        raise AvvpError(f"{where}: {len(unknown)} video(s) not in {split_label}: {_names(unknown)}")
    missing = [name for name in filenames if name not in row_of]
    if missing:
        raise AvvpError(f"{where}: {len(missing)} video(s) of {split_label} have no predictions: {_names(missing)}")
    order = np.fromiter((row_of[name] for name in filenames), dtype=np.int64, count=len(filenames))
    return {key: array[order] for key, array in arrays.items()}


def score_predictions(path: str | Path, split: Split, *, threshold: float = 0.5) -> Scores:
    """Score PRED.npz against a val/test split: the official parse, then the official metrics."""
    check_dense(split)
    return score_aligned(load_predictions(path, split.filenames, split_name=split.name), split, threshold=threshold)


def check_dense(split: Split) -> None:
    if split.audio is None or split.visual is None:
        raise AvvpError(f"split {split.name!r} has no dense ground truth; score val or test")


def score_aligned(predictions: dict[str, np.ndarray], split: Split, *, threshold: float = 0.5) -> Scores:
    """Score prediction arrays in the split's video order: the official parse, then the official metrics."""
    pred_audio, pred_visual = parse_predictions(
        predictions["audio"], predictions["visual"], predictions.get(VIDEO_KEY), threshold
    )
    return evaluate(pred_audio, pred_visual, split.audio, split.visual)
