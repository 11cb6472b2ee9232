"""Modality labels: per training video, which of its weak labels are audible and which are visible.

The file `avvp refine-labels` writes and `avvp train --modality-labels` reads, tab-separated with a header, one row
per video, each label cell comma-separated class names (empty where none):

    filename<TAB>audio_labels<TAB>visual_labels
    -0A9suni5YA_30_40<TAB>Speech,Dog<TAB>Dog

Each cell is a subset of the video's weak labels: a refinement only ever removes a label from a modality.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avvp.data.annotations import BadRow, Split, _parse_classes, _read_rows, video_row_problem
from avvp.data.classes import CLASSES, NUM_CLASSES
from avvp.errors import AvvpError
from avvp.utils import atomic_write_text

HEADER = ("filename", "audio_labels", "visual_labels")
_MAX_LISTED = 5  # videos named in one error


@dataclass(frozen=True)
class ModalityLabels:
    """A modality-label file: filenames in file order, their audible and visible classes."""

    filenames: list[str]
    audio: np.ndarray  # [N, 25] float32 0/1
    visual: np.ndarray  # [N, 25] float32 0/1
    lines: dict[str, int]  # filename -> its 1-based line in the file (for error messages)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (recorded with a run trained on it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_cell(cell: str) -> tuple[list[int], str | None]:
    return ([], None) if cell == "" else _parse_classes(cell)


def read_modality_labels(path: str | Path) -> ModalityLabels:
    """Read a modality-label file; every bad row (columns, filename, unknown class, a video listed twice) is
    reported in one AvvpError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AvvpError(f"{path}: modality-label file not found (`avvp refine-labels` writes one)")
    filenames: list[str] = []
    rows: list[tuple[list[int], list[int]]] = []
    lines: dict[str, int] = {}
    bad: list[BadRow] = []
    for line, cells in _read_rows(path, HEADER):
        problem = video_row_problem(cells, HEADER, lines)
        if problem is not None:
            bad.append(BadRow(line, problem))
            continue
        filename, audio_cell, visual_cell = cells
        (audio, unknown_audio), (visual, unknown_visual) = _parse_cell(audio_cell), _parse_cell(visual_cell)
        unknown = unknown_audio if unknown_audio is not None else unknown_visual
        if unknown is not None:
            bad.append(BadRow(line, f"{filename}: unknown class {unknown!r}"))
            continue
        lines[filename] = line
        filenames.append(filename)
        rows.append((audio, visual))
    if bad:
        listed = "; ".join(f"line {row.line}: {row.reason}" for row in bad[:_MAX_LISTED])
        raise AvvpError(f"{path}: {len(bad)} bad row(s): {listed}{_also(len(bad) - _MAX_LISTED, 'row')}")
    audio_labels = np.zeros((len(filenames), NUM_CLASSES), dtype=np.float32)  # [N, 25]
    visual_labels = np.zeros_like(audio_labels)
    for row, (audio, visual) in enumerate(rows):
        audio_labels[row, audio] = 1.0
        visual_labels[row, visual] = 1.0
    return ModalityLabels(filenames, audio_labels, visual_labels, lines)


def write_modality_labels(path: str | Path, filenames: list[str], audio: np.ndarray, visual: np.ndarray) -> None:
    """Write a modality-label file atomically (classes in the class-list order)."""

    def cell(row: np.ndarray) -> str:
        return ",".join(CLASSES[c] for c in np.flatnonzero(row))

    body = "".join(f"{name}\t{cell(a)}\t{cell(v)}\n" for name, a, v in zip(filenames, audio, visual, strict=True))
    atomic_write_text(path, "\t".join(HEADER) + "\n" + body)


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def training_targets(path: str | Path, full: Split, used: Split) -> np.ndarray:
    """The training targets of the videos of `used` from a modality-label file: [N, 3, 25] float32, rows (weak,
    audio, visual) per video.

    `full` is the whole training split: a file naming a video outside it, or giving a video a class that is not
    among its weak labels, is refused (naming the file, line and video); so is a file that misses a video of
    `used` (the videos trained on, e.g. the first --max-train-videos)."""
    labels = read_modality_labels(path)
    weak_of = {name: row for name, row in zip(full.filenames, full.labels)}
    unknown = [name for name in labels.filenames if name not in weak_of]
    if unknown:
        raise AvvpError(
            f"{path}: {len(unknown)} video(s) not in the training split, e.g. line {labels.lines[unknown[0]]}: "
            f"{_listed(unknown)}"
        )
    row_of = {name: row for row, name in enumerate(labels.filenames)}
    for modality, table in (("audio", labels.audio), ("visual", labels.visual)):
        extra = [name for name, row in row_of.items() if np.any(table[row] > weak_of[name])]
        if extra:
            name = extra[0]
            classes = [CLASSES[c] for c in np.flatnonzero(table[row_of[name]] > weak_of[name])]
            raise AvvpError(
                f"{path}: line {labels.lines[name]}: {name}: {modality} label(s) {', '.join(classes)} not among its "
                f"weak labels (modality labels are a subset of them){_also(len(extra) - 1, 'video')}"
            )
    missing = [name for name in used.filenames if name not in row_of]
    if missing:
        raise AvvpError(f"{path}: no row for {len(missing)} training video(s): {_listed(missing)}")
    rows = [row_of[name] for name in used.filenames]
    weak = np.asarray(used.labels, dtype=np.float32)
    return np.stack([weak, labels.audio[rows], labels.visual[rows]], axis=1)  # [N, 3, 25]


def _also(count: int, noun: str) -> str:
    return f"; and {count} more {noun}(s)" if count > 0 else ""
