"""Batched prediction over whole splits, and the predictions file (`PRED.npz`) that `avvp score` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from avvp.data.features import Features
from avvp.precision import autocast, resolve_precision
from avvp.utils import atomic_path

# Keys of a predictions file (and of `predict`'s result) -> per-video shape; "video" is p_av, "audio_video" p_a,
# "visual_video" p_v (the file format keeps these names).
PREDICTION_KEYS = {"video": (25,), "audio_video": (25,), "visual_video": (25,), "audio": (10, 25), "visual": (10, 25)}
OUTPUT_FIELDS = {"video": "p_av", "audio_video": "p_a", "visual_video": "p_v", "audio": "audio", "visual": "visual"}


@torch.inference_mode()
def predict(
    model: nn.Module,
    features: Features,
    *,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    names: list[str] | None = None,
    where: str = "predictions",
) -> dict[str, np.ndarray]:
    """Run `model` over every video of `features` in batches; returns float32 arrays keyed as `PREDICTION_KEYS`.

    The scores are checked by the one rule (`avvp.scoring.check_scores`): an AvvpError starting with `where` names
    the key and a few of the videos (`names`, the rows of `features`; row numbers when not given) otherwise."""
    from avvp.models.registry import forward_kwargs
    from avvp.scoring import check_scores
    from avvp.utils import progress_bar

    device = torch.device(device)
    model.eval()
    options = forward_kwargs(model)  # the cross-modal-free form of a run trained in it
    count = len(features.audio)
    outputs: dict[str, list[np.ndarray]] = {key: [] for key in PREDICTION_KEYS}
    starts = range(0, count, batch_size)
    for start in progress_bar(starts, progress=progress, desc="predict", unit="batch", leave=False):
        stop = min(start + batch_size, count)
        audio, res152, r2plus1d = (
            torch.as_tensor(np.asarray(array[start:stop]), dtype=torch.float32).to(device, non_blocking=True)
            for array in (features.audio, features.res152, features.r2plus1d)
        )
        with autocast(device, precision):
            result = model(audio, res152, r2plus1d, **options)
        for key in PREDICTION_KEYS:
            outputs[key].append(getattr(result, OUTPUT_FIELDS[key]).float().cpu().numpy())
    predictions = {
        key: np.concatenate(parts) if parts else np.zeros((0, *PREDICTION_KEYS[key]), np.float32)
        for key, parts in outputs.items()
    }
    check_scores(predictions, names if names is not None else [f"row {row}" for row in range(count)], where)
    return predictions


def save_predictions(path: str | Path, filenames: list[str], predictions: dict[str, np.ndarray]) -> None:
    """Write a predictions file atomically (temp file in the same folder, then rename)."""
    arrays = {key: np.asarray(value, dtype=np.float32) for key, value in predictions.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, filenames=np.asarray(filenames, dtype=str), **arrays)


def predict_videos(
    checkpoint: str | Path,
    features_path: str | Path,
    filenames: list[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    precision: str = "fp32",
    unimodal_assign: str | None = None,
    crossmodal_assign: str | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Load a checkpoint (ours or the authors') and predict the listed videos from a features folder or pack.

    The scores are checked by the one rule (`avvp.scoring.check_scores`): an AvvpError names the checkpoint
    otherwise.
    """
    from avvp.checkpoint import load_model
    from avvp.data.annotations import video_id
    from avvp.data.store import open_features

    device = torch.device(device)
    model, _ = load_model(
        checkpoint, unimodal_assign=unimodal_assign, crossmodal_assign=crossmodal_assign, map_location=device
    )
    features = open_features(features_path).load([video_id(name) for name in filenames], pooled=True, progress=progress)
    predictions = predict(
        model,
        features,
        batch_size=batch_size,
        device=device,
        precision=resolve_precision(precision, device),
        progress=progress,
        names=filenames,
        where=f"predictions of {checkpoint}",  # NaN never reaches a file or a score
    )
    return predictions
