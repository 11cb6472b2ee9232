"""Result tables in the layout of the MGN paper's supplement (Tables 1 and 2): mean ± std over seeds, best in bold.

Pure functions on numbers, so the formatting can be tested on fixed values: a sweep (`avvp.sweep`) collects one
`ResultRow` per configuration and renders them as Markdown (for people) and CSV (for scripts). The configuration
columns are those of the first row's settings, none where it has none (a sweep of models at their defaults).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from avvp.metrics import TRACK_TITLES, TRACKS
from avvp.models import ModelSize

LEVELS = ("segment", "event")
DECIMALS = 1  # the paper's precision
MISSING = "–"  # a cell without any finished run


@dataclass(frozen=True)
class ResultRow:
    """One configuration of a table and the test scores of each of its finished seeds."""

    method: str  # the model's title, e.g. "HAN" or "MGN"
    settings: tuple[tuple[str, str], ...]  # configuration columns, e.g. (("CUG depth", "3/3"), ...); may be none
    size: ModelSize
    seeds: tuple[int, ...] = ()  # the seeds that finished, in the order of the score lists
    segment: tuple[dict[str, float], ...] = field(default_factory=tuple)  # per seed: track -> segment-level score
    event: tuple[dict[str, float], ...] = field(default_factory=tuple)  # per seed: track -> event-level score

    def scores(self, level: str, track: str) -> list[float]:
        """The scores of one level and track, one per finished seed."""
        return [scores[track] for scores in getattr(self, level)]


@dataclass(frozen=True)
class RunSummary:
    """One finished run of a sweep: how long it trained and where its validation score ended."""

    name: str
    epochs: int  # epochs trained
    stopped_early: bool
    best_epoch: int
    val_type: tuple[float, ...]  # validation segment-level Type@AV of every epoch trained
    test_type: float  # test segment-level Type@AV of the best epoch

    def last(self, count: int) -> tuple[float, ...]:
        return self.val_type[-count:]


def runs_table(summaries: Sequence[RunSummary], *, window: int = 4, decimals: int = DECIMALS) -> str:
    """Markdown: one line per run with its epochs, best epoch, the val Type@AV of its last `window` epochs, their gain
    (their best minus the best before them; empty when the run is not longer than the window) and its test
    Type@AV; shows whether the runs reached a plateau."""
    header = ["Run", "Epochs", "Stopped early", "Best epoch", f"Val Type@AV, last {window} epochs", "Gain", "Test"]
    lines = [_md_line(header), _md_line(["---", *["---:"] * (len(header) - 1)])]
    for run in summaries:
        last = run.last(window)
        cells = [
            run.name,
            str(run.epochs),
            "yes" if run.stopped_early else "no",
            str(run.best_epoch),
            " ".join(f"{value:.{decimals}f}" for value in last),
            f"{max(last) - max(run.val_type[:-window]):+.{decimals}f}" if run.epochs > window else "",
            f"{run.test_type:.{decimals}f}",
        ]
        lines.append(_md_line(cells))
    return "\n".join(lines) + "\n"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the deviation is None for fewer than two values."""
    if not values:
        return math.nan, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def format_mean_std(mean: float, std: float | None, decimals: int = DECIMALS) -> str:
    """`60.1 ± 0.3`, or just `60.1` without a deviation (one seed), or `–` without any value."""
    if math.isnan(mean):
        return MISSING
    text = f"{mean:.{decimals}f}"
    return text if std is None else f"{text} ± {std:.{decimals}f}"


def best_rows(rows: Sequence[ResultRow], level: str, track: str, decimals: int = DECIMALS) -> set[int]:
    """Indices of the rows whose mean, as printed, is the highest of the column (ties all count as best)."""
    printed = {}
    for index, row in enumerate(rows):
        values = row.scores(level, track)
        if values:
            printed[index] = round(mean_std(values)[0], decimals)
    if not printed:
        return set()
    top = max(printed.values())
    return {index for index, value in printed.items() if value == top}


def size_cells(size: ModelSize) -> tuple[str, str]:
    """The Model Size cells (MB with one decimal, exact parameters); HAN shows released and used sizes."""
    if size.released_parameters is None:
        return f"{size.megabytes:.1f}", f"{size.parameters:,}"
    return (
        f"{size.released_megabytes:.1f} released / {size.megabytes:.1f} used",
        f"{size.released_parameters:,} / {size.parameters:,}",
    )


def markdown_table(rows: Sequence[ResultRow], *, level: str = "segment", decimals: int = DECIMALS) -> str:
    """The paper's layout: Method, configuration columns, Model Size (MB, parameters), the five scores of `level`.

    Scores are mean ± std over the finished seeds; the best mean of each score column is in bold.
    """
    if not rows:
        raise ValueError("a table needs at least one row")
    setting_titles = [title for title, _ in rows[0].settings]
    header = ["Method", *setting_titles, "Model Size (MB)", "Parameters", *(TRACK_TITLES[t] for t in TRACKS)]
    align = ["---"] * (1 + len(setting_titles)) + ["---:"] * (2 + len(TRACKS))
    best = {track: best_rows(rows, level, track, decimals) for track in TRACKS}
    lines = [_md_line(header), _md_line(align)]
    for index, row in enumerate(rows):
        cells = [row.method, *(cell for _, cell in row.settings), *size_cells(row.size)]
        for track in TRACKS:
            text = format_mean_std(*mean_std(row.scores(level, track)), decimals)
            cells.append(f"**{text}**" if index in best[track] else text)
        lines.append(_md_line(cells))
    return "\n".join(lines) + "\n"


def _md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def csv_table(rows: Sequence[ResultRow]) -> str:
    """The table for scripts: configuration, sizes, seeds and mean/std of all ten scores (segment and event level).

    Means and deviations keep four decimals; a deviation is empty for a single seed, scores are empty without any.
    """
    if not rows:
        raise ValueError("a table needs at least one row")
    setting_titles = [title for title, _ in rows[0].settings]
    header = ["method", *(_slug(t) for t in setting_titles), "size_mb", "parameters"]
    header += ["released_size_mb", "released_parameters", "seeds"]
    header += [f"{level}_{track}_{stat}" for level in LEVELS for track in TRACKS for stat in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        released_mb = row.size.released_megabytes
        cells = [row.method, *(cell for _, cell in row.settings), f"{row.size.megabytes:.1f}", row.size.parameters]
        cells += ["" if released_mb is None else f"{released_mb:.1f}", row.size.released_parameters or ""]
        cells.append(";".join(str(seed) for seed in row.seeds))
        for level in LEVELS:
            for track in TRACKS:
                mean, std = mean_std(row.scores(level, track))
                cells += ["" if math.isnan(mean) else f"{mean:.4f}", "" if std is None else f"{std:.4f}"]
        writer.writerow(cells)
    return buffer.getvalue()
