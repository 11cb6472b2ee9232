"""A sweep's small results, kept apart from its weights and data (`avvp results`).

`keep_results` copies what the tables and figures are made from into a folder small enough for a repository:
every finished run's config.json, metrics.jsonl, test_scores.json and best.json, the test predictions (compressed)
of the runs a figure needs, the sweep's sweep.json and tables, and the annotation files that score those
predictions. From that folder alone, `avvp sweep KIND --out DIR --table-only` rewrites the tables and
`avvp plot recall|tokens` redraws the figures: no weights, no features.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avvp.data.annotations import DENSE_FILES, SPLIT_FILES
from avvp.errors import AvvpError
from avvp.utils import atomic_path

RUN_FILES = ("config.json", "metrics.jsonl", "test_scores.json", "best.json")  # every finished run
SWEEP_FILES = ("sweep.json", "table.md", "table.csv")
ANNOTATIONS = "annotations"  # DEST/annotations/: the val and test annotation files, to score the predictions
EXTRA_ANNOTATION_FILES = ("synth.json",)  # LLP-Synth's generator settings, where the data is synthetic


@dataclass
class KeptResults:
    """What `keep_results` wrote."""

    runs: list[str] = field(default_factory=list)  # run folders copied (finished runs)
    predictions: list[str] = field(default_factory=list)  # runs whose test predictions were kept
    skipped: list[str] = field(default_factory=list)  # unfinished runs, left out
    size_bytes: int = 0  # size of everything written


def keep_results(
    sweep_dir: str | Path,
    dest: str | Path,
    *,
    predictions_for: Sequence[str] = (),
    device: str = "cpu",
    features: str | Path | None = None,
    annotations: str | Path | None = None,
) -> KeptResults:
    """Copy a sweep's small results into `dest` (see the module docstring); never weights or features.

    Args:
        sweep_dir: a folder of `avvp sweep` (with sweep.json).
        dest: where to write; files already there are replaced. The kept files of a run that is no longer finished
            (trained on with more epochs, say) are removed, so that a table of `dest` never mixes in old results.
        predictions_for: configuration names (e.g. 'han', 'mgn-3-3-6') whose runs' test predictions are kept,
            computed from their best checkpoints where not cached yet.
        device: device for computing those predictions.
        features, annotations: the sweep's data where it has moved since training (default: as in sweep.json).
    """
    from avvp.sweep import TEST_PREDICTIONS, run_test_predictions

    sweep_dir, dest = Path(sweep_dir), Path(dest)
    record = _read_sweep_record(sweep_dir)
    known = {run["config"] for run in record["runs"]}
    unknown = sorted(set(predictions_for) - known)
    if unknown:
        raise AvvpError(
            f"--predictions {','.join(unknown)}: not a configuration of {sweep_dir} ({', '.join(sorted(known))})"
        )
    kept = KeptResults()
    for run in record["runs"]:
        source = sweep_dir / run["name"]
        if not (source / "test_scores.json").is_file():
            kept.skipped.append(run["name"])
            _remove_kept_run(dest / run["name"])
            continue
        for name in RUN_FILES:
            _copy(source / name, dest / run["name"] / name, kept)
        kept.runs.append(run["name"])
        if run["config"] in predictions_for:
            run_test_predictions(source, device=device, features=features, annotations=annotations)  # cached there
            _compress_predictions(source / TEST_PREDICTIONS, dest / run["name"] / TEST_PREDICTIONS, kept)
            kept.predictions.append(run["name"])
    for name in SWEEP_FILES:
        if (sweep_dir / name).is_file():
            _copy(sweep_dir / name, dest / name, kept)
    _copy_annotations(Path(annotations or record["annotations"]), dest / ANNOTATIONS, kept)
    return kept


def _read_sweep_record(sweep_dir: Path) -> dict:
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise AvvpError(f"{sweep_dir}: no sweep.json; not a folder of avvp sweep")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AvvpError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(record, dict) or not {"runs", "annotations"} <= set(record):
        raise AvvpError(f"{path}: not a sweep.json of avvp sweep (no 'runs' or 'annotations')")
    return record


def _remove_kept_run(folder: Path) -> None:
    """Remove the files an earlier `keep_results` wrote for a run (and the folder, once empty)."""
    from avvp.sweep import TEST_PREDICTIONS

    for name in (*RUN_FILES, TEST_PREDICTIONS):
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _copy(source: Path, target: Path, kept: KeptResults) -> None:
    """Copy one file whole (temporary file, then rename); a file missing from a finished run is an error."""
    if not source.is_file():
        raise AvvpError(f"{source}: missing from a finished run folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    kept.size_bytes += target.stat().st_size


def _compress_predictions(source: Path, target: Path, kept: KeptResults) -> None:
    """A predictions file rewritten with zip compression (same arrays, bit for bit)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with np.load(source) as npz:
        arrays = {key: npz[key] for key in npz.files}
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    kept.size_bytes += target.stat().st_size


def _copy_annotations(folder: Path, target: Path, kept: KeptResults) -> None:
    """The val and test weak labels and the dense audio / visual files: what scoring val or test predictions reads."""
    names = [SPLIT_FILES["val"], SPLIT_FILES["test"], *DENSE_FILES.values()]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise AvvpError(f"{folder}: the sweep's annotations lack {', '.join(missing)} (moved? pass --annotations)")
    for name in [*names, *(n for n in EXTRA_ANNOTATION_FILES if (folder / n).is_file())]:
        _copy(folder / name, target / name, kept)
