"""OUT/sweep.json: what a sweep is made of (kind, data, runs, the shared training recipe), for people and for scripts
(`avvp results`) looking at the folder later."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avvp.run_folder import read_run_record
from avvp.sweep.plan import PlannedRun
from avvp.utils import atomic_write_text


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None where it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_sweep_recipe(out_dir: str | Path, runs: Sequence[PlannedRun] = ()) -> dict[str, Any] | None:
    """The `train` record of OUT/sweep.json, or None where there is none (or it cannot be read); a precision of
    'auto' is completed with what the finished `runs` resolved it to (their config.json), e.g. 'auto (fp32)'."""
    try:
        recipe = dict((_read_json(Path(out_dir) / "sweep.json") or {})["train"])
    except (KeyError, TypeError, ValueError):
        return None
    used = {(read_run_record(run.run_dir) or {}).get("precision") for run in runs if run.run_dir.is_dir()} - {None}
    if recipe.get("precision") == "auto" and used:
        recipe["precision"] = f"auto ({', '.join(sorted(used))})"
    return recipe


def write_sweep_record(
    out_dir: Path,
    kind: str,
    runs: Sequence[PlannedRun],
    features: Path,
    annotations: Path,
    modality_labels: str | None = None,
    noise_ratios: str | None = None,
    *,
    only_if_absent: bool = False,
) -> None:
    """OUT/sweep.json: what the sweep is made of, for people and scripts looking at the folder later. Its run list
    keeps the runs of earlier commands on the same folder (other --configs or --seeds) and adds these;
    `modality_labels` and `noise_ratios` are the sweep's --modality-labels and --noise-ratios as given (templates).
    With `only_if_absent` (`sweep --only`, many processes at once), an existing sweep.json is left as it is: never
    rewritten from a merge that a concurrent writer may have outdated (the commands of one sweep would all write
    the same record)."""
    if only_if_absent and (out_dir / "sweep.json").exists():
        return
    planned = [{"name": run.name, "config": run.config.name, "seed": run.seed} for run in runs]
    earlier = (_read_json(out_dir / "sweep.json") or {}).get("runs", [])
    names = {entry["name"] for entry in planned}
    kept = [e for e in earlier if isinstance(e, dict) and e.get("name") not in names and "config" in e]
    record = {
        "kind": kind,
        "features": str(features),
        "annotations": str(annotations),
        "runs": kept + planned,
        "train": runs[0].train.to_dict()
        | {"model": None, "seed": None, "model_overrides": None}
        | {"modality_labels": modality_labels, "noise_ratios": noise_ratios},
    }
    atomic_write_text(out_dir / "sweep.json", json.dumps(record, indent=2) + "\n")
