"""Test predictions of a finished run's best checkpoint (for per-class recall), cached in its folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from avvp.errors import AvvpError

log = logging.getLogger(__name__)

TEST_PREDICTIONS = "test_pred.npz"  # predictions of the best checkpoint on test, cached by `avvp plot recall`


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's config.json (written by `avvp train`)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise AvvpError(f"{run_dir}: no config.json; not a run folder of avvp train")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AvvpError(f"{path}: not valid JSON ({err})") from err


def _data_path(run_dir: Path, path: str | Path, flag: str) -> Path:
    """A run's data path, which must exist (else: pass `flag`)."""
    path = Path(path)
    if not path.exists():
        raise AvvpError(f"{run_dir}: its data {path} does not exist (moved?); pass {flag}")
    return path


def run_test_predictions(
    run_dir: str | Path,
    *,
    device: str = "cpu",
    features: str | Path | None = None,
    annotations: str | Path | None = None,
):
    """Scores of a run's best checkpoint on test, predicting once and caching RUN_DIR/test_pred.npz.

    The features and annotations are those recorded in the run's config.json unless given (data moved). The cache
    is used while it is newer than best.safetensors; a run folder without weights (kept by `avvp results`) is
    scored from its cache alone, without features.

    Returns:
        (split, scores): the test `Split` and the `Scores` of the cached predictions.
    """
    from avvp.data.annotations import load_split
    from avvp.inference import predict_videos, save_predictions
    from avvp.scoring import score_predictions

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    checkpoint, cache = run_dir / "best.safetensors", run_dir / TEST_PREDICTIONS
    annotations = _data_path(run_dir, annotations or config["annotations"], "--annotations")
    split = load_split(annotations, "test")
    if not checkpoint.is_file():  # kept results (`avvp results`): the cached predictions alone
        if not cache.is_file():
            raise AvvpError(
                f"{run_dir}: neither best.safetensors nor {TEST_PREDICTIONS} (a run that has not finished an epoch, "
                "or results kept without predictions: `avvp results --predictions CONFIG`)"
            )
        return split, score_predictions(cache, split)
    if not cache.exists() or cache.stat().st_mtime < checkpoint.stat().st_mtime:
        features = _data_path(run_dir, features or config["features"], "--features")
        log.info("%s: predicting the test split with best.safetensors", run_dir)
        predictions = predict_videos(checkpoint, features, split.filenames, device=device)
        save_predictions(cache, split.filenames, predictions)
    return split, score_predictions(cache, split)
