"""Figures of the MGN paper's supplement, each with its numbers as CSV beside the PNG.

- `plot_class_recall`: event-level recall of the 25 classes for audio, visual and audio-visual events, one colour
  per run (Figure 1).
- `plot_token_curves`: precision, recall and F1 of the audio and visual class tokens over training (Figure 2).
- `plot_video_parse`: one video's parse against its ground truth, class by class, audio and visual tracks.

This module only draws and writes files; the numbers come from `avvp.metrics`, `avvp.sweep` and the run folders.
matplotlib (Agg backend) is imported inside the functions, so `import avvp.reports.plots` stays light.
"""

from __future__ import annotations

import csv
import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avvp.data.classes import CLASSES, NUM_SEGMENTS
from avvp.errors import AvvpError
from avvp.utils import atomic_path

RECALL_TRACKS = ("audio", "visual", "audio_visual")
TRACK_NAMES = {"audio": "Audio", "visual": "Visual", "audio_visual": "Audio-visual"}
TOKEN_STATS = ("precision", "recall", "f1")
TOKEN_MODALITIES = ("audio", "visual")
# The two readings of Figure 2: (key in metrics.jsonl `tokens`, what the tokens are read against).
TOKEN_READINGS = (("dense", "the dense {modality} truth"), ("weak", "the video's weak labels"))
AGGREGATES = {"mean": np.mean, "min": np.min, "max": np.max}  # over the runs, in the CSV of `plot_token_curves`
# Outcome of one segment in `plot_video_parse`: (colour, label).
OUTCOMES = {
    "hit": ("#2ca02c", "hit: predicted and true"),
    "false_alarm": ("#ff7f0e", "false alarm: predicted, not true"),
    "miss": ("#c7c7c7", "miss: true, not predicted"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Save a figure as PNG atomically and close it."""
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return path


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def csv_path_for(png_path: str | Path) -> Path:
    """The CSV beside a PNG: FILE.png -> FILE.csv."""
    return Path(png_path).with_suffix(".csv")


# ----------------------------------------------------------------------------------------------------------------
# Figure 1: per-class event-level recall


def _percent(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.2f}"


def plot_class_recall(
    recalls: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    events: Mapping[str, np.ndarray] | None = None,
    title: str = "Event-level recall per class (test split)",
) -> tuple[Path, Path]:
    """Grouped bars of per-class event-level recall, one panel per track and one colour per label; CSV beside it.

    Runs that share a label (the seeds of one model) are combined: the bar is their mean and a black line spans
    their lowest to highest recall.

    Args:
        recalls: label -> track ('audio', 'visual', 'audio_visual') -> recall in percent, [25] for one run or
            [runs, 25] (NaN where the class has no ground-truth event of that track).
        path: the PNG to write; FILE.csv gets one row per class and track: the number of test events, then each
            label's mean, min and max over its runs.
        events: track -> number of ground-truth events per class [25], written above the classes when given.
        title: the first part of the figure's title (the legend's explanations follow it).

    Returns:
        (png path, csv path).
    """
    if not recalls:
        raise ValueError("no run to plot")
    plt = _pyplot()
    labels = list(recalls)
    runs = {
        label: {t: np.atleast_2d(np.asarray(recalls[label][t], dtype=float)) for t in RECALL_TRACKS} for label in labels
    }
    figure, axes = plt.subplots(len(RECALL_TRACKS), 1, figsize=(15, 10.5), sharex=True)
    for panel, track in zip(axes, RECALL_TRACKS):
        _recall_panel(panel, track, {label: runs[label][track] for label in labels}, plt.get_cmap("tab10").colors)
        if events is not None:
            for index, count in enumerate(np.asarray(events[track])):
                panel.text(index, 101, str(int(count)), ha="center", va="bottom", fontsize=7, color="#555555")
    positions = np.arange(len(CLASSES))
    axes[-1].set_xticks(positions, [name.replace("_", " ") for name in CLASSES], rotation=45, ha="right")
    axes[0].legend(loc="upper right", ncol=len(labels), fontsize=9, frameon=False, bbox_to_anchor=(1.0, 1.28))
    seeds = (
        "; bars: mean over a label's runs, black line: their lowest to highest"
        if any(runs[label]["audio"].shape[0] > 1 for label in labels)
        else ""
    )
    counts = "; grey numbers: test events per class" if events is not None else ""
    figure.suptitle(
        textwrap.fill(f"{title}; x: no ground-truth event of that class, dash at 0: none found{seeds}{counts}", 170),
        x=0.01,
        ha="left",
        fontsize=11,
    )
    figure.tight_layout()
    return save_figure(figure, path), _write_recall_csv(path, runs, events)


def _recall_panel(panel: Any, track: str, runs: Mapping[str, np.ndarray], colours: Sequence[Any]) -> None:
    """One track's bars: per label the mean over its runs [runs, 25], with the runs' range where there are several."""
    positions = np.arange(len(CLASSES))  # [25]
    width = 0.8 / len(runs)
    for index, (label, values) in enumerate(runs.items()):
        offset = (index - (len(runs) - 1) / 2) * width
        mean = _nanmean(values)
        colour = colours[index % 10]
        panel.bar(positions + offset, np.nan_to_num(mean), width, label=label, color=colour)
        if values.shape[0] > 1:
            low, high = _nanrange(values)
            panel.vlines(positions + offset, low, high, color="black", linewidth=0.8)
        missing = np.isnan(mean)  # no ground-truth event of this class and track: mark it, not a zero bar
        panel.plot(positions[missing] + offset, np.full(missing.sum(), 3.0), "x", color="#888888", markersize=4)
        found_none = mean == 0  # events, none found: a flat dash in the label's colour, not an invisible bar
        dash = {"color": colour, "markersize": max(4.0, 60 * width), "markeredgewidth": 2.5}
        panel.plot(positions[found_none] + offset, np.full(found_none.sum(), 0.8), "_", **dash)
    panel.set_ylim(0, 100)
    panel.set_ylabel("recall (%)")
    panel.set_title(f"{TRACK_NAMES[track]} events", loc="left", fontsize=11, pad=12)
    panel.grid(axis="y", color="#dddddd", linewidth=0.6)
    panel.set_axisbelow(True)
    panel.set_xlim(-0.6, len(CLASSES) - 0.4)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over runs [runs, 25] -> [25], NaN where every run is NaN (no warning)."""
    counts = (~np.isnan(values)).sum(axis=0)
    sums = np.nansum(values, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _nanrange(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest over runs [runs, 25], NaN where every run is NaN."""
    missing = np.isnan(values).all(axis=0)
    low = np.where(missing, np.nan, np.where(np.isnan(values), np.inf, values).min(axis=0))
    high = np.where(missing, np.nan, np.where(np.isnan(values), -np.inf, values).max(axis=0))
    return low, high


def _write_recall_csv(
    path: str | Path, runs: Mapping[str, Mapping[str, np.ndarray]], events: Mapping[str, np.ndarray] | None
) -> Path:
    """One row per class and track: test events, then per label the mean, min and max recall over its runs."""
    header = ["class", "track", "events", *(f"{label} {stat}" for label in runs for stat in ("mean", "min", "max"))]
    rows = []
    for track in RECALL_TRACKS:
        stats = {label: (_nanmean(runs[label][track]), *_nanrange(runs[label][track])) for label in runs}
        for index, name in enumerate(CLASSES):
            count = "" if events is None else int(np.asarray(events[track])[index])
            cells = [_percent(float(stat[index])) for label in runs for stat in stats[label]]
            rows.append([name, track, count, *cells])
    return write_csv(csv_path_for(path), header, rows)


# ----------------------------------------------------------------------------------------------------------------
# Figure 2: class-token precision / recall / F1 over epochs


def load_token_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per epoch, the class-token scores a run recorded in metrics.jsonl: [{"epoch", "steps", "audio", "visual",
    "weak"}], where "audio" and "visual" read the tokens against each modality's dense truth and "weak" ({"audio",
    "visual"}) against the video's weak labels, or is None (runs of avvp before 2026-12-06 did not record it)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise AvvpError(f"{run_dir}: no metrics.jsonl; not a run folder of avvp train")
    history = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise AvvpError(f"{path}, line {line_number}: not valid JSON ({err.msg})") from err
        if "tokens" not in record:
            raise AvvpError(f"{path}, line {line_number}: no class-token scores (a HAN run? only MGN has tokens)")
        tokens = record["tokens"]
        if "split" not in tokens or "steps" not in record:
            raise AvvpError(
                f"{path}, line {line_number}: class-token scores of the old definition (the class head on the "
                "learned tokens, 100 % from epoch 1); train the run again with this version"
            )
        entry = {"epoch": int(record["epoch"]), "steps": int(record["steps"]), "weak": tokens.get("weak")}
        history.append(entry | {"audio": tokens["audio"], "visual": tokens["visual"]})
    if not history:
        raise AvvpError(f"{path}: no epoch recorded yet")
    return history


def has_weak_reading(history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a run recorded the weak-label reading of its tokens in every epoch."""
    return all(entry.get("weak") is not None for entry in history)


def plot_token_curves(
    histories: Sequence[Sequence[Mapping[str, Any]]], path: str | Path, *, title: str = ""
) -> tuple[Path, Path]:
    """Precision, recall and F1 of the audio and visual class tokens against training steps: one row of two panels
    (audio, visual) per reading, against each modality's dense truth and, when every run recorded it, against the
    video's weak labels (a second row; `has_weak_reading`).

    Several runs (the seeds of one model) are combined: the line is their mean and the band spans their lowest
    to highest value; the curves stop at the shortest run (early stopping ends runs at different epochs).

    Args:
        histories: one per run, as from `load_token_history` (each entry: 'epoch', 'steps', the 'audio' and
            'visual' score dicts in percent, and 'weak'); the runs must share their steps per epoch.
        path: the PNG to write; FILE.csv gets one row per epoch (mean, min and max of each score; the weak-label
            reading's columns start with `weak_`).
    """
    readings = TOKEN_READINGS if all(has_weak_reading(history) for history in histories) else TOKEN_READINGS[:1]
    epochs, steps, values = _stack_histories(histories, readings)  # [runs, epochs, reading, modality, stat]
    plt = _pyplot()
    figure, axes = plt.subplots(len(readings), 2, figsize=(11, 4 * len(readings)), sharey=True, squeeze=False)
    for reading, (_, against) in enumerate(readings):
        for modality, name in enumerate(TOKEN_MODALITIES):
            panel = axes[reading, modality]
            _plot_token_panel(panel, steps, values[:, :, reading, modality], bands=len(histories) > 1)
            panel.set_title(
                f"{name.capitalize()} class tokens against {against.format(modality=name)}", loc="left", fontsize=10
            )
        axes[reading, 0].set_ylabel("% (val split)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper right", ncol=3, fontsize=9, frameon=False)
    if title:
        figure.suptitle(title, x=0.01, ha="left", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.05 / len(readings)))
    return save_figure(figure, path), _write_token_csv(path, epochs, steps, values, readings)


def _plot_token_panel(panel, steps: list[int], values: np.ndarray, *, bands: bool) -> None:
    """One panel: precision, recall and F1 over the steps (values [runs, epochs, stat]), mean and range."""
    styles = {"precision": ("#1f77b4", "o"), "recall": ("#2ca02c", "s"), "f1": ("#d62728", "^")}
    for stat, stat_name in enumerate(TOKEN_STATS):
        colour, marker = styles[stat_name]
        series = values[:, :, stat]  # [runs, epochs]
        panel.plot(steps, series.mean(axis=0), color=colour, marker=marker, markersize=4, label=_stat_name(stat_name))
        if bands:
            panel.fill_between(steps, series.min(axis=0), series.max(axis=0), color=colour, alpha=0.15)
    panel.set_xlabel(f"training steps ({steps[0]} per epoch)")
    panel.set_ylim(-2, 102)
    panel.grid(color="#dddddd", linewidth=0.6)


def _write_token_csv(
    path: str | Path, epochs: list[int], steps: list[int], values: np.ndarray, readings: Sequence[tuple[str, str]]
) -> Path:
    """One row per epoch: epoch, steps, then the mean, min and max over the runs of each reading's scores."""
    columns = [
        (r, m, s) for r in range(len(readings)) for m in range(len(TOKEN_MODALITIES)) for s in range(len(TOKEN_STATS))
    ]
    header = ["epoch", "steps"]
    for r, m, s in columns:
        prefix = f"{readings[r][0]}_" if readings[r][0] != "dense" else ""
        header += [f"{prefix}{TOKEN_MODALITIES[m]}_{TOKEN_STATS[s]}_{name}" for name in AGGREGATES]
    rows = []
    for index, (epoch, step) in enumerate(zip(epochs, steps)):
        cells = [
            f"{aggregate(values[:, index, r, m, s]):.2f}" for r, m, s in columns for aggregate in AGGREGATES.values()
        ]
        rows.append([epoch, step, *cells])
    return write_csv(csv_path_for(path), header, rows)


def _stat_name(stat: str) -> str:
    return "F1" if stat == "f1" else stat


def _stack_histories(
    histories: Sequence[Sequence[Mapping[str, Any]]], readings: Sequence[tuple[str, str]]
) -> tuple[list[int], list[int], np.ndarray]:
    """The epochs and steps all runs reached, and their scores [runs, epochs, reading, modality, stat]."""
    if not histories:
        raise ValueError("no run to plot")
    length = min(len(history) for history in histories)
    epochs = [entry["epoch"] for entry in histories[0][:length]]
    steps = [entry["steps"] for entry in histories[0][:length]]
    for history in histories[1:]:
        if [entry["steps"] for entry in history[:length]] != steps:
            raise AvvpError("the runs differ in their steps per epoch (another batch size or training set)")

    def scores(entry: Mapping[str, Any], reading: str) -> Mapping[str, Any]:
        return entry if reading == "dense" else entry[reading]

    values = np.array(
        [
            [
                [[[scores(entry, r)[m][s] for s in TOKEN_STATS] for m in TOKEN_MODALITIES] for r, _ in readings]
                for entry in run
            ]
            for run in (history[:length] for history in histories)
        ]
    )
    return epochs, steps, values


# ----------------------------------------------------------------------------------------------------------------
# One video's parse against its ground truth


def plot_video_parse(
    path: str | Path,
    *,
    filename: str,
    audio_probs: np.ndarray,
    visual_probs: np.ndarray,
    gt_audio: np.ndarray,
    gt_visual: np.ndarray,
    video_probs: np.ndarray | None = None,
    threshold: float = 0.5,
    title: str | None = None,
) -> tuple[Path, Path]:
    """One video: for each class predicted or true, its audio and visual rows over the 10 segments.

    Each segment is coloured by its outcome (hit, false alarm, miss) and shows the segment probability; the row
    label gives the video-level probability, which gates the segments (the official parse). CSV beside the PNG:
    one row per shown class, track and segment.

    Args:
        audio_probs, visual_probs: [10, 25] segment probabilities.
        gt_audio, gt_visual: [10, 25] bool ground truth.
        video_probs: [25] video-level (audio-visual) probabilities, or None when the predictions have none.
        title: the first line of the title (default: '<filename>: prediction vs ground truth').
    """
    from matplotlib.patches import Patch, Rectangle

    from avvp.metrics import parse_predictions

    probs = {"audio": np.asarray(audio_probs, float), "visual": np.asarray(visual_probs, float)}  # [10, 25] each
    truth = {"audio": np.asarray(gt_audio, bool), "visual": np.asarray(gt_visual, bool)}  # [10, 25] each
    gate = None if video_probs is None else np.asarray(video_probs, float)[None]  # [1, 25]
    pred_audio, pred_visual = parse_predictions(probs["audio"][None], probs["visual"][None], gate, threshold)
    pred = {"audio": pred_audio[0], "visual": pred_visual[0]}  # [10, 25] bool each
    shown = [c for c in range(len(CLASSES)) if any(pred[t][:, c].any() or truth[t][:, c].any() for t in pred)]

    plt = _pyplot()
    rows_count = 2 * max(1, len(shown))
    figure, axes = plt.subplots(figsize=(12, 1.6 + 0.42 * rows_count))
    counts = {track: {outcome: 0 for outcome in OUTCOMES} for track in pred}
    csv_rows = []
    labels = []
    for index, cls in enumerate(shown):
        gate_text = "" if video_probs is None else f"  (video {float(video_probs[cls]):.2f})"
        for offset, track in enumerate(("audio", "visual")):
            row = 2 * index + offset
            labels.append(f"{CLASSES[cls].replace('_', ' ')}{gate_text}  · {track}" if offset == 0 else f"{track}")
            for segment in range(NUM_SEGMENTS):
                is_pred, is_true = bool(pred[track][segment, cls]), bool(truth[track][segment, cls])
                outcome = "hit" if is_pred and is_true else "false_alarm" if is_pred else "miss" if is_true else None
                face = "white" if outcome is None else OUTCOMES[outcome][0]
                hatch = "//" if outcome == "miss" else None
                axes.add_patch(Rectangle((segment, row - 0.42), 1, 0.84, facecolor=face, edgecolor="#555555",
                                         linewidth=0.5, hatch=hatch))  # fmt: skip
                probability = probs[track][segment, cls]
                axes.text(segment + 0.5, row, f"{probability:.2f}", ha="center", va="center", fontsize=7,
                          color="black" if outcome else "#999999")  # fmt: skip
                if outcome:
                    counts[track][outcome] += 1
                csv_rows.append([CLASSES[cls], track, segment, f"{probability:.4f}",
                                 "" if video_probs is None else f"{float(video_probs[cls]):.4f}",
                                 int(is_pred), int(is_true)])  # fmt: skip
        if index:
            axes.axhline(2 * index - 0.5, color="black", linewidth=1.0)
    axes.set_xlim(0, NUM_SEGMENTS)
    axes.set_ylim(rows_count - 0.5, -0.5)
    axes.set_xticks(np.arange(NUM_SEGMENTS) + 0.5, [f"{s}-{s + 1}s" for s in range(NUM_SEGMENTS)], fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.tick_params(axis="y", length=0)
    if not shown:
        axes.text(NUM_SEGMENTS / 2, 0.5, "no event predicted or true", ha="center", va="center", color="#666666")
    summary = "; ".join(
        f"{track}: {c['hit']} hit, {c['false_alarm']} false alarm, {c['miss']} missed segments"
        for track, c in counts.items()
    )
    heading = title or f"{filename}: prediction vs ground truth"
    axes.set_title(f"{heading}\n{summary}", loc="left", fontsize=10)
    handles = [Patch(facecolor=c, edgecolor="#555555", hatch="//" if k == "miss" else None, label=label)
               for k, (c, label) in OUTCOMES.items()]  # fmt: skip
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)
    height = figure.get_figheight()
    figure.tight_layout(rect=(0, 0.45 / height, 1, 1))
    header = ["class", "track", "segment", "probability", "video_probability", "predicted", "true"]
    csv_file = write_csv(csv_path_for(path), header, csv_rows)
    return save_figure(figure, path), csv_file
