"""Figures of the MGN paper's supplement, each with its numbers as CSV beside the PNG.

- `plot_class_recall`: event-level recall of the 25 classes for audio, visual and audio-visual events, one colour
  per run (Figure 1).
- `plot_token_curves`: precision, recall and F1 of the audio and visual class tokens per epoch (Figure 2).
- `plot_video_parse`: one video's parse against its ground truth, class by class, audio and visual tracks.

This module only draws and writes files; the numbers come from `avvp.metrics`, `avvp.sweep` and the run folders.
matplotlib (Agg backend) is imported inside the functions, so `import avvp.reports.plots` stays light.
"""

from __future__ import annotations

import csv
import json
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


def plot_class_recall(recalls: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> tuple[Path, Path]:
    """Grouped bars of per-class event-level recall, one panel per track and one colour per run; CSV beside it.

    Args:
        recalls: run label -> track ('audio', 'visual', 'audio_visual') -> recall in percent [25] (NaN where the
            class has no ground-truth event of that track).
        path: the PNG to write; FILE.csv gets one row per class and track, one column per run.

    Returns:
        (png path, csv path).
    """
    if not recalls:
        raise ValueError("no run to plot")
    plt = _pyplot()
    labels = list(recalls)
    positions = np.arange(len(CLASSES))  # [25]
    width = 0.8 / len(labels)
    colours = plt.get_cmap("tab10").colors
    figure, axes = plt.subplots(len(RECALL_TRACKS), 1, figsize=(15, 10), sharex=True)
    for panel, track in zip(axes, RECALL_TRACKS):
        for index, label in enumerate(labels):
            values = np.asarray(recalls[label][track], dtype=float)  # [25]
            offset = (index - (len(labels) - 1) / 2) * width
            panel.bar(positions + offset, np.nan_to_num(values), width, label=label, color=colours[index % 10])
            missing = np.isnan(values)  # no ground-truth event of this class and track: mark it, not a zero bar
            panel.plot(positions[missing] + offset, np.full(missing.sum(), 3.0), "x", color="#888888", markersize=4)
        panel.set_ylim(0, 100)
        panel.set_ylabel("recall (%)")
        panel.set_title(f"{TRACK_NAMES[track]} events", loc="left", fontsize=11)
        panel.grid(axis="y", color="#dddddd", linewidth=0.6)
        panel.set_axisbelow(True)
        panel.set_xlim(-0.6, len(CLASSES) - 0.4)
    axes[-1].set_xticks(positions, [name.replace("_", " ") for name in CLASSES], rotation=45, ha="right")
    axes[0].legend(loc="upper right", ncol=len(labels), fontsize=9, frameon=False, bbox_to_anchor=(1.0, 1.2))
    figure.suptitle(
        "Event-level recall per class (test split); x: no ground-truth event of that class",
        x=0.01,
        ha="left",
        fontsize=12,
    )
    figure.tight_layout()
    rows = [
        [name, track, *(_percent(float(recalls[label][track][index])) for label in labels)]
        for track in RECALL_TRACKS
        for index, name in enumerate(CLASSES)
    ]
    csv_file = write_csv(csv_path_for(path), ["class", "track", *labels], rows)
    return save_figure(figure, path), csv_file


# ----------------------------------------------------------------------------------------------------------------
# Figure 2: class-token precision / recall / F1 over epochs


def load_token_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per epoch, the class-token scores a run recorded in metrics.jsonl: [{"epoch", "audio", "visual"}, ...]."""
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
        history.append({"epoch": int(record["epoch"]), "audio": tokens["audio"], "visual": tokens["visual"]})
    if not history:
        raise AvvpError(f"{path}: no epoch recorded yet")
    return history


def plot_token_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> tuple[Path, Path]:
    """Precision, recall and F1 of the audio and visual class tokens per epoch (two panels); CSV beside it.

    Args:
        history: as from `load_token_history`, one entry per epoch with 'epoch', 'audio' and 'visual' score dicts
            (percent).
        path: the PNG to write; FILE.csv gets one row per epoch.
    """
    plt = _pyplot()
    epochs = [entry["epoch"] for entry in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    styles = {"precision": ("#1f77b4", "o"), "recall": ("#2ca02c", "s"), "f1": ("#d62728", "^")}
    for panel, modality in zip(axes, ("audio", "visual")):
        for stat in TOKEN_STATS:
            colour, marker = styles[stat]
            values = [entry[modality][stat] for entry in history]
            panel.plot(epochs, values, color=colour, marker=marker, markersize=4, label=stat.replace("f1", "F1"))
        panel.set_title(f"{modality} class tokens", loc="left", fontsize=11)
        panel.set_xlabel("epoch")
        panel.set_ylim(-2, 102)
        panel.grid(color="#dddddd", linewidth=0.6)
        if len(epochs) < 20:
            panel.set_xticks(epochs)
    axes[0].set_ylabel("%")
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper right", ncol=3, fontsize=9, frameon=False)
    if title:
        figure.suptitle(title, x=0.01, ha="left", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    header = ["epoch", *(f"{m}_{s}" for m in ("audio", "visual") for s in TOKEN_STATS)]
    rows = [
        [entry["epoch"], *(f"{entry[m][s]:.2f}" for m in ("audio", "visual") for s in TOKEN_STATS)] for entry in history
    ]
    csv_file = write_csv(csv_path_for(path), header, rows)
    return save_figure(figure, path), csv_file


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
) -> tuple[Path, Path]:
    """One video: for each class predicted or true, its audio and visual rows over the 10 segments.

    Each segment is coloured by its outcome (hit, false alarm, miss) and shows the segment probability; the row
    label gives the video-level probability, which gates the segments (the official parse). CSV beside the PNG:
    one row per shown class, track and segment.

    Args:
        audio_probs, visual_probs: [10, 25] segment probabilities.
        gt_audio, gt_visual: [10, 25] bool ground truth.
        video_probs: [25] video-level (audio-visual) probabilities, or None when the predictions have none.
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
    axes.set_title(f"{filename}: prediction vs ground truth\n{summary}", loc="left", fontsize=10)
    handles = [Patch(facecolor=c, edgecolor="#555555", hatch="//" if k == "miss" else None, label=label)
               for k, (c, label) in OUTCOMES.items()]  # fmt: skip
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)
    height = figure.get_figheight()
    figure.tight_layout(rect=(0, 0.45 / height, 1, 1))
    header = ["class", "track", "segment", "probability", "video_probability", "predicted", "true"]
    csv_file = write_csv(csv_path_for(path), header, csv_rows)
    return save_figure(figure, path), csv_file
