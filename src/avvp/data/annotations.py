"""Readers for the LLP annotation files: weak-label lists and the dense audio / visual ground truth.

All files are tab-separated with a header row. Rows that cannot be read (a malformed filename, an unknown class,
onset/offset not an integer in 0..10, a video listed twice) are collected and reported together in one error
naming the file, line and reason, so that a corrupted copy (several circulate) cannot silently change scores.
Rows of the clean eval files that the official evaluation silently ignores (videos in no split, events with
onset >= offset) are accepted and ignored the same way, with one warning counting them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avvp.data.classes import CLASS_INDEX, NUM_CLASSES, NUM_SEGMENTS
from avvp.errors import AvvpError

log = logging.getLogger(__name__)

SPLIT_FILES = {
    "train": "AVVP_train.csv",
    "val": "AVVP_val_pd.csv",
    "test": "AVVP_test_pd.csv",
    "full": "AVVP_dataset_full.csv",
}
DENSE_FILES = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
EVAL_SPLITS = ("val", "test")

WEAK_HEADER = ("filename", "event_labels")
DENSE_HEADER = ("filename", "onset", "offset", "event_labels")

VIDEO_ID_LENGTH = 11
_NUMBER = r"\d+(?:\.\d+)?"
# `<youtube id>_<start>_<end>`; start/end may be decimals (`AP0061o0Nvk_101.8_111.8`).
FILENAME_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{{VIDEO_ID_LENGTH}}}_{_NUMBER}_{_NUMBER}")
# The clean eval files name a few videos whose id lost characters (`P7x4FV4lg_570_580`); such rows are in no
# split and are ignored, but a cell that is not even shaped like a filename (a class name, a stray backtick) is bad.
_LOOSE_FILENAME_PATTERN = re.compile(rf"[A-Za-z0-9_-]+_{_NUMBER}_{_NUMBER}")
_MAX_LISTED = 10  # bad rows spelled out in one error message


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def video_id(filename: str) -> str:
    """The YouTube id of an LLP filename (its first 11 characters), which names its feature files."""
    return filename[:VIDEO_ID_LENGTH]


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be read, with its 1-based line number in the file."""

    line: int
    reason: str


@dataclass(frozen=True)
class WeakLabels:
    """A weak-label list: filenames in file order and their video-level labels."""

    filenames: list[str]
    labels: np.ndarray  # [N, 25] float32 0/1

    @property
    def video_ids(self) -> list[str]:
        return [video_id(name) for name in self.filenames]


@dataclass(frozen=True)
class IgnoredRows:
    """Rows of a dense eval file that the official evaluation silently ignores (accepted, then ignored)."""

    path: Path
    no_split: list[tuple[int, str]] = field(default_factory=list)  # (line, filename): video in neither val nor test
    zero_length: list[tuple[int, str]] = field(default_factory=list)  # (line, filename): onset == offset
    onset_after_offset: list[tuple[int, str]] = field(default_factory=list)  # (line, filename): onset > offset

    def __bool__(self) -> bool:
        return bool(self.no_split or self.zero_length or self.onset_after_offset)

    def summary(self) -> str:
        """One line counting the ignored rows by reason."""
        parts = []
        if self.no_split:
            videos = len({name for _, name in self.no_split})
            parts.append(f"{_count(len(self.no_split), 'row')} ({_count(videos, 'video')}) name videos in no split")
        if self.zero_length:
            parts.append(f"{_count(len(self.zero_length), 'row')} with onset = offset")
        if self.onset_after_offset:
            parts.append(f"{_count(len(self.onset_after_offset), 'row')} with onset > offset")
        return f"{self.path.name}: " + ", ".join(parts)

    def details(self) -> Iterator[str]:
        """One line per ignored row, for `--verbose`."""
        for reason, rows in (
            ("video in no split", self.no_split),
            ("onset = offset", self.zero_length),
            ("onset > offset", self.onset_after_offset),
        ):
            for line, name in rows:
                yield f"{self.path}: line {line}: {name}: ignored ({reason}, as in the official evaluation)"


@dataclass(frozen=True)
class Split:
    """One split: weak labels and, for val/test, the dense audio and visual ground truth."""

    name: str
    filenames: list[str]
    labels: np.ndarray  # [N, 25] float32 0/1
    audio: np.ndarray | None  # [N, 10, 25] bool, val/test only
    visual: np.ndarray | None  # [N, 10, 25] bool, val/test only

    @property
    def video_ids(self) -> list[str]:
        return [video_id(name) for name in self.filenames]


@dataclass(frozen=True)
class DenseEvent:
    """One row of a dense eval file: `class_index` is present in segments onset .. offset-1."""

    line: int
    filename: str
    onset: int
    offset: int
    class_index: int


def _read_rows(path: Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank data row, after checking the header."""
    if not path.is_file():
        raise AvvpError(f"{path}: annotation file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise AvvpError(f"{path}: cannot read: {err}") from err
    lines = text.splitlines()
    if not lines or tuple(lines[0].split("\t")) != header:
        found = lines[0] if lines else "an empty file"
        raise AvvpError(f"{path}: line 1: expected the tab-separated header {' '.join(header)!r}, found {found!r}")
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            yield number, line.split("\t")


def _report_bad_rows(path: Path, bad_rows: list[BadRow], skip_bad_rows: bool) -> None:
    """Raise one error listing every bad row, or, when skipping, warn with their count."""
    if not bad_rows:
        return
    listed = "; ".join(f"line {row.line}: {row.reason}" for row in bad_rows[:_MAX_LISTED])
    more = f"; and {len(bad_rows) - _MAX_LISTED} more" if len(bad_rows) > _MAX_LISTED else ""
    if not skip_bad_rows:
        raise AvvpError(
            f"{path}: {len(bad_rows)} bad row(s): {listed}{more} (fix the file, or pass --skip-bad-rows to skip them)"
        )
    log.warning("%s: skipped %s that cannot be read (--verbose lists them)", path, _count(len(bad_rows), "bad row"))
    for row in bad_rows:
        log.debug("%s: line %d: skipped: %s", path, row.line, row.reason)


def video_row_problem(cells: list[str], header: tuple[str, ...], first_line: dict[str, int]) -> str | None:
    """Why a row of a per-video list (filename first; `first_line`: the videos read so far) cannot be read: its
    number of columns, its filename, or a video listed twice; None for a good row."""
    if len(cells) != len(header):
        return f"expected {len(header)} tab-separated columns, found {len(cells)}"
    filename = cells[0]
    if not FILENAME_PATTERN.fullmatch(filename):
        return f"filename {filename!r} is not <11-character id>_<start>_<end>"
    if filename in first_line:
        return f"video {filename} is listed twice (also on line {first_line[filename]})"
    return None


def _parse_classes(cell: str) -> tuple[list[int], str | None]:
    """Class indices of a comma-separated label cell, or the first unknown name."""
    indices = []
    for name in cell.split(","):
        if name not in CLASS_INDEX:
            return [], name
        indices.append(CLASS_INDEX[name])
    return indices, None


def read_weak_labels(path: str | Path, *, skip_bad_rows: bool = False, allow_empty: bool = False) -> WeakLabels:
    """Read a weak-label list (`filename<TAB>Class,Class,...`) into filenames and [N, 25] labels.

    Raises AvvpError listing every bad row (malformed filename, unknown class, video listed twice) unless
    `skip_bad_rows`, which skips them with a warning counting them; and, unless `allow_empty`, when the list
    holds no video (only its header, or only skipped rows).
    """
    path = Path(path)
    filenames: list[str] = []
    label_rows: list[list[int]] = []
    first_line: dict[str, int] = {}
    bad_rows: list[BadRow] = []
    for line, cells in _read_rows(path, WEAK_HEADER):
        problem = video_row_problem(cells, WEAK_HEADER, first_line)
        if problem is not None:
            bad_rows.append(BadRow(line, problem))
            continue
        filename, labels_cell = cells
        classes, unknown = _parse_classes(labels_cell)
        if unknown is not None:
            bad_rows.append(BadRow(line, f"{filename}: unknown class {unknown!r}"))
            continue
        first_line[filename] = line
        filenames.append(filename)
        label_rows.append(classes)
    _report_bad_rows(path, bad_rows, skip_bad_rows)
    if not filenames and not allow_empty:
        skipped = f" (its {_count(len(bad_rows), 'row')} skipped as bad)" if bad_rows else " (only its header)"
        raise AvvpError(f"{path} lists no videos{skipped}")
    labels = np.zeros((len(filenames), NUM_CLASSES), dtype=np.float32)  # [N, 25]
    for row, classes in enumerate(label_rows):
        labels[row, classes] = 1.0
    return WeakLabels(filenames, labels)


def read_dense_events(path: str | Path, *, skip_bad_rows: bool = False) -> list[DenseEvent]:
    """Read every row of a dense eval file (`filename onset offset class`), validated.

    Rows with onset >= offset are returned as they are (they mark no segment, as in the official evaluation).
    """
    path = Path(path)
    events: list[DenseEvent] = []
    bad_rows: list[BadRow] = []
    for line, cells in _read_rows(path, DENSE_HEADER):
        if len(cells) != len(DENSE_HEADER):
            bad_rows.append(BadRow(line, f"expected {len(DENSE_HEADER)} tab-separated columns, found {len(cells)}"))
            continue
        filename, onset_cell, offset_cell, class_name = cells
        if filename in CLASS_INDEX:
            bad_rows.append(BadRow(line, f"the filename column holds the class name {filename!r}"))
            continue
        if not _LOOSE_FILENAME_PATTERN.fullmatch(filename):
            bad_rows.append(BadRow(line, f"filename {filename!r} is not <id>_<start>_<end>"))
            continue
        times = []
        for column, cell in (("onset", onset_cell), ("offset", offset_cell)):
            if not (cell.isascii() and cell.isdigit() and int(cell) <= NUM_SEGMENTS):
                bad_rows.append(BadRow(line, f"{filename}: {column} {cell!r} is not an integer in 0..{NUM_SEGMENTS}"))
                break
            times.append(int(cell))
        if len(times) != 2:
            continue
        if class_name not in CLASS_INDEX:
            bad_rows.append(BadRow(line, f"{filename}: unknown class {class_name!r}"))
            continue
        events.append(DenseEvent(line, filename, times[0], times[1], CLASS_INDEX[class_name]))
    _report_bad_rows(path, bad_rows, skip_bad_rows)
    return events


def find_ignored_rows(
    path: str | Path, events: Iterable[DenseEvent], known_filenames: Iterable[str] | None
) -> IgnoredRows:
    """The rows of a dense eval file that the official evaluation silently ignores.

    `known_filenames` are the videos of the eval splits (val and test); rows naming others are "in no split"
    (not checked when it is None).
    """
    known = None if known_filenames is None else set(known_filenames)
    ignored = IgnoredRows(Path(path))
    for event in events:
        if known is not None and event.filename not in known:
            ignored.no_split.append((event.line, event.filename))
        if event.onset == event.offset:
            ignored.zero_length.append((event.line, event.filename))
        elif event.onset > event.offset:
            ignored.onset_after_offset.append((event.line, event.filename))
    return ignored


def dense_labels(events: Iterable[DenseEvent], filenames: Sequence[str]) -> np.ndarray:
    """Dense ground truth [N, 10, 25] bool of `filenames` (in that order); events of other videos are left out."""
    row_of = {name: row for row, name in enumerate(filenames)}
    truth = np.zeros((len(filenames), NUM_SEGMENTS, NUM_CLASSES), dtype=bool)  # [N, 10, 25]
    for event in events:
        row = row_of.get(event.filename)
        if row is not None:
            # Segments onset .. offset-1, like the official `GT[c, onset:offset] = 1` (empty when onset >= offset).
            truth[row, event.onset : event.offset, event.class_index] = True
    return truth


def _warn_if_no_events(path: Path, modality: str, truth: np.ndarray, videos: str) -> None:
    """One warning when none of the videos has a dense event in `path` (a header-only or wrong file): every
    score of that modality would be 0 without a word."""
    if len(truth) and not truth.any():
        log.warning(
            "%s lists no %s event for any of the %s (header only, or the wrong file?): its scores mean nothing",
            path,
            modality,
            videos,
        )


def _warn_ignored(reports: Iterable[IgnoredRows]) -> None:
    """One warning counting the ignored rows of the eval files; every row at DEBUG level (`--verbose`)."""
    reports = [report for report in reports if report]
    if not reports:
        return
    log.warning(
        "ignoring annotation rows as the official evaluation does: %s (--verbose lists them)",
        "; ".join(report.summary() for report in reports),
    )
    for report in reports:
        for detail in report.details():
            log.debug("%s", detail)


def read_dense_labels(
    path: str | Path,
    filenames: Sequence[str],
    *,
    known_filenames: Iterable[str] | None = None,
    skip_bad_rows: bool = False,
) -> np.ndarray:
    """Dense ground truth [N, 10, 25] bool of `filenames` (in that order) from an eval file.

    Rows of other videos are left out. With `known_filenames` (all videos of the eval splits), rows naming
    videos outside it are counted as "in no split" in the warning; rows with onset >= offset mark nothing.
    """
    path = Path(path)
    events = read_dense_events(path, skip_bad_rows=skip_bad_rows)
    known = None if known_filenames is None else set(known_filenames) | set(filenames)
    _warn_ignored([find_ignored_rows(path, events, known)])
    truth = dense_labels(events, filenames)
    modality = next((name for name, file in DENSE_FILES.items() if file == path.name), "dense")
    _warn_if_no_events(path, modality, truth, _count(len(filenames), "video"))
    return truth


def load_split(annotations_dir: str | Path, split: str, *, skip_bad_rows: bool = False) -> Split:
    """Weak labels of a split and, for val and test, its dense audio and visual ground truth."""
    if split not in SPLIT_FILES:
        raise AvvpError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    folder = Path(annotations_dir)
    weak = read_weak_labels(folder / SPLIT_FILES[split], skip_bad_rows=skip_bad_rows)
    if split not in EVAL_SPLITS:
        return Split(split, weak.filenames, weak.labels, None, None)
    other_path = folder / SPLIT_FILES["test" if split == "val" else "val"]
    # Rows of videos in neither eval split are counted in the warning; without the other list that is unknown.
    known = (
        set(weak.filenames) | set(read_weak_labels(other_path, skip_bad_rows=skip_bad_rows, allow_empty=True).filenames)
        if other_path.is_file()
        else None
    )
    truth, ignored = {}, []
    for modality, filename in DENSE_FILES.items():
        events = read_dense_events(folder / filename, skip_bad_rows=skip_bad_rows)
        ignored.append(find_ignored_rows(folder / filename, events, known))
        truth[modality] = dense_labels(events, weak.filenames)
    _warn_ignored(ignored)
    for modality, filename in DENSE_FILES.items():
        _warn_if_no_events(folder / filename, modality, truth[modality], f"{len(weak.filenames)} {split} videos")
    return Split(split, weak.filenames, weak.labels, truth["audio"], truth["visual"])
