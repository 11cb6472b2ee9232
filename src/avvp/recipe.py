"""The training recipe as a configuration (the authors' training scripts), without importing torch: `avvp train --help` and the
sweep read their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avvp.config import ConfigMixin


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """The training recipe; defaults are the authors' (their training scripts)."""

    model: str = "mgn"  # a registered model: "mgn", "han" or a plugin's (`avvp models`)
    epochs: int = 40  # passes over the training split
    batch_size: int = 16  # global batch size (split across processes under torchrun)
    lr: float = 3e-4  # Adam learning rate
    lr_step: int = 10  # StepLR: decay every this many epochs
    lr_gamma: float = 0.1  # StepLR decay factor
    visual_target_scale: float = 0.9  # the visual video-level target is scale * y + shift (label smoothing)
    visual_target_shift: float = 0.05
    seed: int = 1  # seeds initialisation, shuffling, dropout and Gumbel noise
    eval_batch_size: int = 128  # batch size for validation and test prediction
    precision: str = "auto"  # fp32, bf16 or auto (bf16 on CUDA, fp32 elsewhere)
    compile: bool = False  # wrap the model in torch.compile
    cuda_graphs: bool = False  # capture the whole training step in a CUDA graph (CUDA, one process)
    stream: bool = False  # read each batch from disk (DataLoader) instead of holding the train split in memory
    loader_workers: int = 2  # DataLoader worker processes when streaming
    max_train_videos: int | None = None  # use only the first N training videos (smoke tests, demos)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # fields of the model's config (`--model-arg`)
    patience: int | None = None  # early stopping: stop after this many epochs without a better val Type@AV
    min_epochs: int = 0  # early stopping counts epochs without a better val Type@AV only after this many
    modality_labels: str | None = None  # a modality-label file (`avvp refine-labels`): p_a and p_v train on its labels
    cross_modal: bool = True  # False: train (and later run) the model's cross-modal-free form (`--no-cross-modal`)
    loss_weights: dict[str, float] = field(default_factory=dict)  # loss term -> weight, overriding its default
    noise_ratios: str | None = None  # JoMoLD: a NOISE.json (`avvp estimate-noise`); labels are denoised in training
    denoise_from_epoch: int = 2  # JoMoLD removes labels from this epoch on (the authors' code: the second)

    def stops_after(self, epoch: int, best_epoch: int) -> bool:
        """Early stopping: whether training ends after `epoch`, the best validation epoch so far being `best_epoch`
        (ties count as better, as the best epoch keeps the later of equal ones). Epochs are counted from the later
        of the best epoch and `min_epochs`, so a model that stalls at first (MGN's class tokens start at zero) is
        not stopped before `min_epochs + patience`."""
        if self.patience is None:
            return False
        return epoch - max(best_epoch, self.min_epochs) >= self.patience
