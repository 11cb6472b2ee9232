"""The public Python API, exported at the top level (`avvp.create_model`, `avvp.predict`, ...): the same library the
command line calls, for notebooks and other projects. docs/api.md walks through it.

Importing this module imports no torch; each function imports what it needs when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avvp.errors import AvvpError
from avvp.models.registry import create_model, list_models

if TYPE_CHECKING:
    from torch import nn

    from avvp.data.features import Features
    from avvp.metrics import Scores
    from avvp.recipe import TrainConfig
    from avvp.training import TrainResult

__all__ = ["create_model", "evaluate", "list_models", "load_model", "predict", "train"]


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    unimodal_assign: str | None = None,
    crossmodal_assign: str | None = None,
    with_info: bool = False,
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """A model in eval mode from one of our checkpoints (NAME.safetensors) or an authors' one (MGN_Net.pt,
    MMIL_Net.pt); with `with_info`, also what the file said (format, model, config, metadata such as the epoch).

    The authors' files do not record MGN's assignment kinds: `unimodal_assign` / `crossmodal_assign` give them.
    """
    from avvp.checkpoint import load_model as load

    model, info = load(path, unimodal_assign=unimodal_assign, crossmodal_assign=crossmodal_assign, map_location=device)
    return (model, info) if with_info else model


def predict(
    model: nn.Module | str | Path,
    features: str | Path | Features | Sequence[Any],
    *,
    videos: Sequence[str] | None = None,
    batch_size: int = 128,
    device: str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> dict[str, Any]:
    """Run a model (or a checkpoint file) over videos; returns the arrays of a predictions file (PRED.npz).

    Args:
        model: a model (`create_model`, `load_model`) or a checkpoint path.
        features: a features folder in the official layout, a pack or a folder of packs (then `videos` names the
            videos to predict, e.g. a split's `filenames`); a `Features`; or (audio [N, 10, 128], res152 [N, 80 or
            10, 2048], r2plus1d [N, 10, 512]) arrays or tensors.
        videos: filenames (or YouTube ids) of the videos to read from a features path.
    Returns:
        `video` (p_av), `audio_video` (p_a), `visual_video` (p_v) [N, 25] and `audio`, `visual` [N, 10, 25] float32
        arrays, and `filenames` (the `videos` given, else row numbers), as `evaluate` and `avvp score` read them.
    """
    import numpy as np

    from avvp.data.features import Features
    from avvp.inference import predict as run_model
    from avvp.precision import resolve_precision

    if isinstance(model, (str, Path)):
        model = load_model(model, device=device)
    if isinstance(features, (str, Path)):
        features = _read_features(features, videos)
    elif not isinstance(features, Features):
        audio, res152, r2plus1d = (np.asarray(_to_numpy(array), dtype=np.float32) for array in features)
        features = Features(audio, res152, r2plus1d)
    names = list(videos) if videos is not None else [f"row {row}" for row in range(len(features.audio))]
    if len(names) != len(features.audio):
        raise AvvpError(f"predict: {len(names)} videos named for {len(features.audio)} rows of features")
    import torch

    resolved = resolve_precision(precision, torch.device(device))
    predictions = run_model(
        model, features, batch_size=batch_size, device=device, precision=resolved, progress=progress, names=names
    )
    return {"filenames": names, **predictions}


def _read_features(path: str | Path, videos: Sequence[str] | None) -> Features:
    from avvp.data.annotations import video_id
    from avvp.data.store import open_features

    if videos is None:
        raise AvvpError(f"predict: name the videos to read from {path} (videos=split.filenames, for example)")
    return open_features(path).load([video_id(name) for name in videos], pooled=True)


def _to_numpy(array: Any) -> Any:
    return array.detach().cpu().numpy() if hasattr(array, "detach") else array


def evaluate(
    predictions: dict[str, Any] | str | Path,
    annotations: str | Path,
    split: str = "test",
    *,
    threshold: float = 0.5,
) -> Scores:
    """The official LLP metrics of predictions against a split's dense annotations: the ten numbers, segment and
    event level of Audio, Visual, Audio-Visual, Type@AV and Event@AV (`scores.segment`, `scores.event`).

    Args:
        predictions: what `predict` returns (its `filenames` must be the split's videos, in any order), or a
            PRED.npz file.
        annotations: the folder of the LLP annotation files (AVVP_*.csv), LLP-Synth's included.
        split: "val" or "test".
        threshold: the parse's probability threshold (the official 0.5).
    """
    import numpy as np

    from avvp.data.annotations import load_split
    from avvp.scoring import align_predictions, check_dense, check_predictions, load_predictions, score_aligned

    truth = load_split(annotations, split)
    check_dense(truth)
    if isinstance(predictions, (str, Path)):
        arrays = load_predictions(predictions, truth.filenames, split_name=truth.name)
    else:
        if "filenames" not in predictions:
            raise AvvpError("evaluate: the predictions have no `filenames` (the video of each row)")
        names = [str(name) for name in predictions["filenames"]]
        scored = {
            key: np.asarray(_to_numpy(predictions[key])) for key in ("audio", "visual", "video") if key in predictions
        }
        if "audio" not in scored or "visual" not in scored:
            raise AvvpError("evaluate: the predictions need `audio` and `visual` [N, 10, 25] arrays")
        check_predictions(scored, names, "evaluate: the predictions")
        arrays = align_predictions(names, scored, truth.filenames, where="evaluate", split_name=truth.name)
    return score_aligned(arrays, truth, threshold=threshold)


def train(
    config: TrainConfig | dict[str, Any],
    *,
    features: str | Path,
    annotations: str | Path,
    out_dir: str | Path,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    tensorboard: str | Path | None = None,
) -> TrainResult:
    """Train a registered model with a recipe (`avvp.TrainConfig`, or a dict of its fields) as `avvp train` does;
    returns the `TrainResult`, whose `out_dir` is the run folder (config.json, metrics.jsonl, best.safetensors,
    test_scores.json). `tensorboard`: also write each epoch as TensorBoard scalars into that folder."""
    from avvp.recipe import TrainConfig
    from avvp.training import train as run

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    return run(
        config, features=features, annotations=annotations, out_dir=out_dir, device=device, resume=resume,
        progress=progress, tensorboard=tensorboard,
    )  # fmt: skip
