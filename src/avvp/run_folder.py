"""A training run's folder: what `avvp train` writes there, the lock a writer holds, and the rules for reusing it.

Rules (docs/reliability.md):
- one writer at a time: `train` holds OUT/.train.lock (a sweep OUT/.sweep.lock) for as long as it writes;
- a folder with last.pt resumes only under the configuration it was trained with, except for the settings in
  `SAFE_ON_RESUME` (they do not change what is computed); each such change is recorded;
- a folder killed before its first checkpoint (no last.pt) holding nothing but run files of the same
  configuration starts again from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avvp.errors import AvvpError
from avvp.utils import PidLock

__all__ = [
    "RUN_FILES",
    "SAFE_ON_RESUME",
    "PidLock",
    "clear_partial_run",
    "compare_runs",
    "foreign_files",
    "read_run_record",
]

RUN_FILES = {"config.json", "metrics.jsonl", "best.safetensors", "best.json", "last.pt", "test_scores.json"}
# TrainConfig fields a resumed run may change: more epochs, and settings that change speed or memory, not results
# (not --cuda-graphs: its Adam must be capturable, and a restored optimiser keeps the settings it was saved with)
LABELS_HASH = "modality_labels_sha256"  # config.json: the content of the modality-label file trained on
NOISE_HASH = "noise_ratios_sha256"  # config.json: the content of the JoMoLD noise-ratio file trained with
SAFE_ON_RESUME = ("epochs", "eval_batch_size", "loader_workers", "stream", "compile")


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    """config.json of a run folder, or None where there is none."""
    path = run_dir / "config.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AvvpError(f"{path}: unreadable ({err}); delete {run_dir} to train it again") from None
    if not isinstance(record, dict):
        raise AvvpError(f"{path}: not a run record of avvp train; delete {run_dir} to train it again")
    return record


def compare_runs(stored: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], dict[str, list[Any]]]:
    """How the run record `current` differs from `stored` (config.json): (the differences that change what is
    trained, each as 'key: stored -> current'; the safe changes, key -> [stored, current])."""
    refused, safe = [], {}
    stored_train, current_train = stored.get("train", {}), current["train"]
    for key, value in current_train.items():
        before = stored_setting(stored_train, key)
        if before != value:
            if key in SAFE_ON_RESUME:
                safe[key] = [before, value]
            else:
                refused.append(f"{key}: {before!r} -> {value!r}")
    for key in ("model", "features", "annotations", "train_videos", "world_size", "precision", LABELS_HASH, NOISE_HASH):
        if stored.get(key) != current.get(key):
            refused.append(f"{key}: {stored.get(key)!r} -> {current.get(key)!r}")
    return refused, safe


def stored_setting(stored_train: dict[str, Any], key: str) -> Any:
    """A TrainConfig field as a run folder's config.json records it; a key that an older version did not write
    means the field's default (every setting is compared, including those added since)."""
    from avvp.recipe import TrainConfig

    if key in stored_train:
        return stored_train[key]
    return TrainConfig().to_dict().get(key)


def foreign_files(run_dir: Path) -> list[str]:
    """Names in a run folder that `avvp train` does not write (hidden ones aside: they are never deleted)."""
    return sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))


def clear_partial_run(run_dir: Path) -> None:
    """Delete the run files of a run killed before its first checkpoint, but only if the folder holds nothing else
    visible; hidden entries (a user's `.git`, notes, avvp's own lock) are left as they are."""
    foreign = foreign_files(run_dir)
    if foreign:
        raise AvvpError(
            f"{run_dir} is an unfinished run that also holds {', '.join(foreign)}: not deleting it; move "
            "those files away or delete the folder"
        )
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
