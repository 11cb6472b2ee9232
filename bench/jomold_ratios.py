"""Not speed: JoMoLD's estimated noise ratios beside the true ones, per class (docs/jomold.md).

    python bench/jomold_ratios.py NOISE.json [NOISE.json ...] [--labels HAN,MGN]

Each NOISE.json is `avvp estimate-noise`'s output on LLP-Synth, which records beside the estimated ratios the true
per-class shares of weak labels absent in each modality (`true_shares`, from the regenerated training truth).
Printed: one row per class with the true audio and visual shares and each file's estimates, then per file the
mean absolute difference from the truth and the label-weighted mean of each (the share of all weak labels the
ratios would remove against the share truly absent).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from avvp.data.annotations import load_split
from avvp.data.classes import CLASSES

MODALITIES = ("audio", "visual")


def load(path: Path) -> dict:
    record = json.loads(path.read_text())
    if "true_shares" not in record:
        sys.exit(f"{path}: no true_shares (not estimated on LLP-Synth)")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="NOISE.json")
    parser.add_argument("--labels", help="comma-separated names of the files' estimators (default: file names)")
    args = parser.parse_args()
    records = [load(path) for path in args.files]
    labels = args.labels.split(",") if args.labels else [path.stem for path in args.files]
    truth = records[0]["true_shares"]
    split = load_split(records[0]["annotations"], "train")
    counts = (split.labels[: records[0]["videos"]] > 0).sum(axis=0)  # the training videos each class has
    header = ["class", "videos", "true audio", *[f"{n} audio" for n in labels], "true visual"]
    header += [f"{n} visual" for n in labels]
    print("| " + " | ".join(header) + " |")
    print("| --- | ---: |" + " ---: |" * (len(header) - 2))
    for index, name in enumerate(CLASSES):
        cells = [name, str(int(counts[index]))]
        for modality in MODALITIES:
            cells.append(f"{truth[modality][name]:.2f}")
            cells += [f"{record[modality][name]:.2f}" for record in records]
        print("| " + " | ".join(cells) + " |")
    print()
    for label, record in zip(labels, records):
        for modality in MODALITIES:
            true = np.array([truth[modality][name] for name in CLASSES])
            estimate = np.array([record[modality][name] for name in CLASSES])
            weighted = float((estimate * counts).sum() / counts.sum())
            actual = float((true * counts).sum() / counts.sum())
            print(
                f"{label} {modality}: mean |estimate - truth| {np.abs(estimate - true).mean():.3f} over the classes; "
                f"weighted by labels: removes {100 * weighted:.1f} % of the weak labels, {100 * actual:.1f} % are absent"
            )


if __name__ == "__main__":
    main()
