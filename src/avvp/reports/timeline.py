"""The timeline of a parsed video: one row per class, bars for when it is heard, seen, or both."""

from __future__ import annotations

from pathlib import Path

MODALITY_COLOURS = {"audio": "#1f77b4", "visual": "#2ca02c", "audio-visual": "#9467bd"}
MODALITY_LABELS = {"audio": "heard only (audio)", "visual": "seen only (visual)", "audio-visual": "heard and seen"}


def plot_timeline(
    path: str | Path,
    events: list,
    num_seconds: int,
    title: str,
    class_order: tuple[str, ...],
    random_weights: bool = False,
) -> None:
    """Draw ``events`` (avvp.parse.Event) over an L-second video into the PNG ``path``.

    Rows are the classes that have events, in class order; bar opacity follows the event's confidence.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    classes = [name for name in class_order if any(e.class_name == name for e in events)]
    row_of = {name: row for row, name in enumerate(classes)}
    width = min(16.0, max(8.0, 6.0 + num_seconds * 0.12))
    height = 1.6 + 0.45 * max(1, len(classes))
    figure, axes = plt.subplots(figsize=(width, height), dpi=100)
    for event in events:
        row = row_of[event.class_name]
        alpha = 0.35 + 0.65 * min(1.0, max(0.0, (event.confidence - 0.5) / 0.5))  # 0.5 -> faint, 1.0 -> solid
        axes.broken_barh(
            [(event.onset, event.offset - event.onset)],
            (row - 0.38, 0.76),
            facecolors=MODALITY_COLOURS[event.modality],
            alpha=alpha,
            edgecolor="black",
            linewidth=0.6,
        )
        if event.offset - event.onset >= max(1, num_seconds / 25):
            axes.text(
                (event.onset + event.offset) / 2,
                row,
                f"{event.confidence:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black",
            )
    axes.set_xlim(0, num_seconds)
    axes.set_ylim(-0.6, max(1, len(classes)) - 0.4)
    axes.set_yticks(range(len(classes)), [name.replace("_", " ") for name in classes])
    axes.invert_yaxis()
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if num_seconds / s <= 20)
    axes.set_xticks(range(0, num_seconds + 1, step))
    axes.set_xlabel("time (s)")
    axes.grid(axis="x", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)
    if not classes:
        axes.text(num_seconds / 2, 0, "no events detected", ha="center", va="center", fontsize=12, color="#666666")
    axes.set_title(title, fontsize=11, loc="left")
    if random_weights:
        figure.text(
            0.99,
            0.99,
            "RANDOM WEIGHTS (test/demo only)",
            ha="right",
            va="top",
            color="#d62728",
            fontsize=10,
            fontweight="bold",
        )
    handles = [Patch(facecolor=c, edgecolor="black", label=MODALITY_LABELS[m]) for m, c in MODALITY_COLOURS.items()]
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)
    figure.tight_layout(rect=(0, 0.4 / height, 1, 1 - 0.15 / height))
    figure.savefig(path, format="png")
    plt.close(figure)
