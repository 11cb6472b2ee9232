"""What a run holds while it trains: what is fixed once it is set up (`Run`, `Stepper`) and where it stands from one
epoch to the next (`Standing`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avvp.data.splits import SplitData
from avvp.denoise import NoiseRatios
from avvp.distributed import DistributedContext
from avvp.recipe import TrainConfig
from avvp.steps import GraphedTrainStep, TrainStep

TimeLeft = Callable[[int, float], float]  # (epoch just done, mean wall seconds per epoch) -> seconds left


@dataclass(frozen=True)
class DataSources:
    """Where a run reads its splits: train and test from `features`, val too unless its features are elsewhere."""

    features: Path  # the features folder or pack
    annotations: Path  # the folder of the annotation files
    val_features: Path | None = None  # the val split's features, where they are not in `features`
    skip_bad_rows: bool = False  # malformed rows of the annotation files are skipped (with a warning), not fatal


@dataclass(frozen=True)
class TrainingData:
    """The splits a run trains and validates on, and its training labels."""

    train: SplitData
    val: SplitData | None  # main process only
    targets: np.ndarray  # [N, 25] weak labels of the training videos, or [N, 3, 25] with modality labels
    noise: NoiseRatios | None = None  # JoMoLD's ratios (`--noise-ratios`)
    truth: tuple[np.ndarray, np.ndarray] | None = None  # LLP-Synth: [N, 25] bool audible, visible (for the records)

    @property
    def videos(self) -> int:
        """The number of training videos (an epoch passes over each once)."""
        return len(self.train.split.filenames)


@dataclass(frozen=True)
class Learner:
    """The objects that learn: made once per run; their state is what last.pt saves and `--resume` restores."""

    model: nn.Module  # the plain model (validation, checkpoints)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    shuffle: torch.Generator  # the epoch permutations, the same on every process


@dataclass(frozen=True)
class Display:
    """What a run prints."""

    progress: bool  # progress bars, and one line per epoch
    label: str = ""  # printed before each epoch line where several runs train together
    time_left: TimeLeft | None = None  # the ETA of each epoch line (`train`'s argument)


@dataclass(frozen=True)
class Run:
    """What is fixed for a run once it is set up."""

    config: TrainConfig
    out_dir: Path  # the run folder
    sources: DataSources
    device: torch.device
    precision: str  # the training precision, resolved: fp32 or bf16
    ctx: DistributedContext
    data: TrainingData
    learner: Learner
    display: Display

    @property
    def state_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"


@dataclass(frozen=True)
class Stepper:
    """How a run steps: made once its state is restored (the step may wrap the model in torch.compile or DDP)."""

    train_step: TrainStep | GraphedTrainStep
    index_device: torch.device  # the training tensors' device, where the epoch's video indices go


@dataclass
class Standing:
    """Where a run stands from one epoch to the next (restored from last.pt on resume)."""

    start_epoch: int = 1  # the first epoch this process trains
    last_epoch: int = 0  # the last epoch trained
    best_epoch: int = 0
    best_type: float = -math.inf  # the best epoch's validation segment-level Type@AV
    stopped: bool = False  # early stopping ended the run (saved in last.pt)
    resumed_changes: dict[str, list[Any]] = field(default_factory=dict)  # safe settings changed by this resume
    epoch_walls: list[float] = field(default_factory=list)  # wall seconds of each epoch trained here (train + val)
