"""The pieces of `avvp demo`'s report: the side-by-side table, results.json, training curves and report.md.

Pure formatting on numbers plus one figure; the numbers come from `avvp.demo`. The one-video timeline is
`avvp.reports.plots.plot_video_parse`, shared with `avvp plot`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avvp.metrics import LEVELS, TRACK_TITLES, TRACKS
from avvp.models import ModelSize

ORACLE_TITLE = "broadcast oracle"
LEVEL_TITLES = {"segment": "Segment-level", "event": "Event-level"}
SHORT_TRACK_TITLES = {"audio": "A", "visual": "V", "audio_visual": "AV", "type": "Type", "event": "Event"}
# Segment-level Type@AV to set the demo's numbers beside: published on real LLP (HAN: Tian et al. 2020; MGN (3,3,6),
# Softmax/Softmax: Mo & Tian 2022), and LLP-Synth v2 with the full recipe, mean ± std over 3 seeds (docs/synth.md).
PUBLISHED_TYPE_AV = {"HAN": 54.0, "MGN": 55.6}
CALIBRATION_TYPE_AV = {"HAN": (54.7, 0.1), "MGN": (54.2, 2.1)}
CALIBRATION_NOTE = (
    "LLP-Synth is calibrated on both published models (each lands near its published LLP score with the full "
    "recipe), so the demo shows both methods working; it is no evidence of which is better on real LLP."
)
# Per-sample loss terms that HAN and MGN share (MGN adds its class-token terms), so the curves compare.
SHARED_LOSS_TERMS = ("p_av", "p_a", "p_v")


@dataclass(frozen=True)
class DemoRow:
    """One row of the demo table: a trained model, or the oracle (no parameters, no training)."""

    title: str  # "HAN", "MGN" or "broadcast oracle"
    segment: Mapping[str, float]  # track -> segment-level score (percent)
    event: Mapping[str, float]  # track -> event-level score (percent)
    parameters: int | None = None
    train_seconds: float | None = None

    @property
    def megabytes(self) -> float | None:
        return None if self.parameters is None else ModelSize.to_megabytes(self.parameters)

    def numbers(self) -> list[float]:
        """The ten official numbers: segment level then event level, tracks in the official order."""
        return [getattr(self, level)[track] for level in LEVELS for track in TRACKS]

    def size_cells(self) -> list[str]:
        """Parameters, MB and training seconds as printed ('-' for the oracle)."""
        if self.parameters is None:
            return ["-", "-", "-"]
        seconds = "-" if self.train_seconds is None else f"{self.train_seconds:.1f}"
        return [f"{self.parameters:,}", f"{self.megabytes:.2f}", seconds]


def text_table(rows: Sequence[DemoRow]) -> str:
    """The side-by-side table for a terminal: the ten numbers (one decimal), parameters, MB, training seconds."""
    title_width = max(len(ORACLE_TITLE), *(len(row.title) for row in rows))
    number_width = 6
    block = len(TRACKS) * (number_width + 1)
    levels_line = " " * title_width + "".join(f" {LEVEL_TITLES[level]:<{block}}" for level in LEVELS)
    size_heads = [("params", 11), ("MB", 7), ("train s", 8)]
    header = f"{'':<{title_width}}" + "".join(
        f" {SHORT_TRACK_TITLES[track]:>{number_width}}" for _ in LEVELS for track in TRACKS
    )
    header += " " + "".join(f" {name:>{width}}" for name, width in size_heads)
    lines = [levels_line.rstrip(), header]
    for row in rows:
        line = f"{row.title:<{title_width}}" + "".join(f" {value:>{number_width}.1f}" for value in row.numbers())
        line += " " + "".join(f" {cell:>{width}}" for cell, (_, width) in zip(row.size_cells(), size_heads))
        lines.append(line)
    lines.append("A = Audio, V = Visual, AV = Audio-Visual, Type = Type@AV, Event = Event@AV (F-scores, %)")
    return "\n".join(lines)


def markdown_table(rows: Sequence[DemoRow]) -> str:
    """The same table in Markdown, one column per number."""
    heads = ["Method"]
    heads += [
        f"{'Seg.' if level == 'segment' else 'Event'} {TRACK_TITLES[track]}" for level in LEVELS for track in TRACKS
    ]
    heads += ["Parameters", "MB", "Train s"]
    lines = ["| " + " | ".join(heads) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(heads) - 1)) + " |"]
    for row in rows:
        cells = [row.title, *(f"{value:.1f}" for value in row.numbers()), *row.size_cells()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_lines(rows: Sequence[DemoRow]) -> list[str]:
    """Each model's segment-level Type@AV beside the published one and the calibration spread, then what that
    means (for the terminal and report.md)."""
    lines = []
    for row in rows:
        if row.title in PUBLISHED_TYPE_AV:
            mean, std = CALIBRATION_TYPE_AV[row.title]
            lines.append(
                f"{row.title}: segment Type@AV {row.segment['type']:.1f} here; {mean:.1f} ± {std:.1f} on LLP-Synth with "
                f"the full recipe (3 seeds); {PUBLISHED_TYPE_AV[row.title]:.1f} published on real LLP"
            )
    return [*lines, CALIBRATION_NOTE]


def results_payload(dataset: Mapping[str, int], models: Mapping[str, DemoRow], oracle: DemoRow) -> dict[str, Any]:
    """results.json: dataset sizes and seed, each model's ten numbers, parameters and seconds, the oracle's numbers.

    Args:
        dataset: {"train", "val", "test", "seed"}.
        models: model name ("mgn", "han") -> its row, in the order to write.
        oracle: the broadcast oracle's row.
    """
    return {
        "dataset": {key: int(dataset[key]) for key in ("train", "val", "test", "seed")},
        "models": {
            name: {
                "segment": {track: float(row.segment[track]) for track in TRACKS},
                "event": {track: float(row.event[track]) for track in TRACKS},
                "parameters": int(row.parameters or 0),
                "train_seconds": float(row.train_seconds or 0.0),
            }
            for name, row in models.items()
        },
        "oracle_broadcast": {
            "segment": {track: float(oracle.segment[track]) for track in TRACKS},
            "event": {track: float(oracle.event[track]) for track in TRACKS},
        },
    }


def results_json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, indent=2) + "\n"


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's metrics.jsonl (loss terms, lr, validation scores)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Two panels, one line per model: training loss and validation segment-level Type@AV per epoch.

    The loss is the sum of the per-sample terms both models share (video, audio and visual BCE); MGN's
    class-token terms are left out so that the curves compare.

    Args:
        histories: model title -> per-epoch records as in metrics.jsonl.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from avvp.reports.plots import save_figure

    figure, (loss_axes, type_axes) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"HAN": "#1f77b4", "MGN": "#d62728"}
    for title, history in histories.items():
        epochs = [record["epoch"] for record in history]
        loss = [sum(record["loss"][term] for term in SHARED_LOSS_TERMS) for record in history]
        val_type = [record["val"]["segment"]["type"] for record in history]
        style = {"color": colours.get(title), "marker": "o", "markersize": 4, "label": title}
        loss_axes.plot(epochs, loss, **style)
        type_axes.plot(epochs, val_type, **style)
    loss_axes.set_title("training loss (video + audio + visual BCE)", loc="left", fontsize=11)
    type_axes.set_title("validation Type@AV, segment level (%)", loc="left", fontsize=11)
    for axes in (loss_axes, type_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(color="#dddddd", linewidth=0.6)
        axes.legend(fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def report_markdown(
    *,
    scale_text: str,
    rows: Sequence[DemoRow],
    curves_png: str,
    video_pngs: Mapping[str, str],
    video_filename: str,
    total_seconds: float,
) -> str:
    """report.md: the scale, the table, the training curves and one test video parsed by each model."""
    lines = [
        "# avvp demo: HAN and MGN on LLP-Synth",
        "",
        scale_text,
        "",
        "## Test split (LLP-Synth), official metrics",
        "",
        markdown_table(rows),
        "",
        (
            "F-scores in percent, segment level then event level. The broadcast oracle copies each test video's true "
            "video-level labels to all 10 segments of both modalities: it knows what occurs, not when or whether "
            "heard or seen. MB is the size of the float32 weights; training seconds exclude validation."
        ),
        "",
        "## Beside the published numbers",
        "",
        *(f"- {line}" for line in reference_lines(rows)[:-1]),
        "",
        reference_lines(rows)[-1],
        "",
        "## Training curves",
        "",
        f"![training curves]({curves_png})",
        "",
        f"## One test video: `{video_filename}`",
        "",
    ]
    for title, png in video_pngs.items():
        lines += [f"{title}:", "", f"![{title} on {video_filename}]({png})", ""]
    lines += [f"Whole demo: {total_seconds:.0f} s.", ""]
    return "\n".join(lines)
