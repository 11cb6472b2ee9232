"""A split's annotations with its features, as training and validation use them: held in memory as tensors, or
streamed from disk batch by batch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avvp.data.annotations import Split, load_split
from avvp.data.features import Features
from avvp.data.store import open_features


@dataclass
class SplitData:
    """A split's annotations and its features held in memory."""

    split: Split
    features: Features | None  # None when streaming
    features_path: Path | None = None


def subset_split(split: Split, limit: int) -> Split:
    """The first `limit` videos of a split."""
    return dataclasses.replace(
        split,
        filenames=split.filenames[:limit],
        labels=split.labels[:limit],
        audio=None if split.audio is None else split.audio[:limit],
        visual=None if split.visual is None else split.visual[:limit],
    )


def load_split_data(
    features_path: Path,
    annotations: Path,
    name: str,
    *,
    limit: int | None = None,
    stream: bool = False,
    skip_bad_rows: bool = False,
) -> SplitData:
    """Annotations and in-memory features of one split (res152 averaged per second); with `stream`, the features
    are only checked to exist and are read batch by batch during training."""
    split = load_split(annotations, name, skip_bad_rows=skip_bad_rows)
    if limit is not None and limit < len(split.filenames):
        split = subset_split(split, limit)
    store = open_features(features_path)
    if stream:
        store.check_present(split.video_ids)  # read batch by batch later: check the files now
        return SplitData(split, None, Path(features_path))
    return SplitData(split, store.load(split.video_ids, pooled=True, progress=True), Path(features_path))


def check_split_features(features_path: Path, annotations: Path, name: str, *, skip_bad_rows: bool = False) -> None:
    """Every video of a split has its features, checked without reading them (`check_present` of the store)."""
    split = load_split(annotations, name, skip_bad_rows=skip_bad_rows)
    open_features(features_path).check_present(split.video_ids)


def feature_tensors(data: SplitData, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(audio, res152, r2plus1d) float32 tensors of a split held in memory: on a CUDA device when they take less
    than half its free memory (else pinned host memory), on the CPU otherwise."""
    arrays = (data.features.audio, data.features.res152, data.features.r2plus1d)
    tensors = tuple(torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in arrays)
    if device.type == "cuda":
        need = sum(t.numel() * 4 for t in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if need < 0.5 * free:
            return tuple(t.to(device) for t in tensors)
        return tuple(t.pin_memory() for t in tensors)
    return tensors


class StreamedBatches(torch.utils.data.Dataset):
    """Batches read from disk for streaming training: item i is the i-th batch of the given index lists."""

    def __init__(self, features_path: Path, video_ids: list[str], labels: np.ndarray, batches: list[np.ndarray]):
        self.features_path, self.video_ids, self.labels, self.batches = features_path, video_ids, labels, batches
        self._store = None  # opened lazily in each worker process

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if self._store is None:
            self._store = open_features(self.features_path)
        index = self.batches[i]
        features = self._store.load([self.video_ids[j] for j in index], pooled=True)
        arrays = (features.audio, features.res152, features.r2plus1d, self.labels[index])
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays)
