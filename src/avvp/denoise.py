"""Joint-modal label denoising (JoMoLD; Cheng et al., ECCV 2022) for any model with a cross-modal-free form.

Two stages, as the authors' code carries them out:

1. **Noise ratios** (`estimate_noise`, `avvp estimate-noise`). An estimator, a model trained on the weak labels
   without exchange between the modalities (`avvp train --no-cross-modal`), runs over the training split in eval
   mode and in that form. For each class c, the mean of p_v[c] is the mean of per-batch means over all training
   videos, labelled c or not. A video labelled c is visually noisy when p_v[c] times its (smoothed) visual target
   falls below `v_thres` x that mean; the visual ratio of c is the number of such videos over the number labelled
   c (audio the same, with p_a, the audio target and `a_thres`). A class no training video carries gets ratio 0.
2. **Denoising inside training** (`Denoiser`, `avvp train --noise-ratios`). In every batch a no-grad pass of the
   model being trained, in its cross-modal-free form, gives each label's BCE loss in each modality. For each class,
   the positives of a modality are the videos whose target there is above 0.5, and n = floor(ratio x their
   number). A visual label is removed when, among the visual positives, its visual loss is among the n largest
   AND its audio loss among the n smallest; audio is symmetric (`removal_masks`). A removed label is a hard 0 in
   that modality's target for that step only.

Departures from the authors' code, each chosen and documented (docs/jomold.md):
- The ranking pass runs in eval mode (no dropout, no Gumbel noise), where theirs runs in train mode: it draws no
  random numbers, so the training's random stream is untouched and with every ratio 0 a run equals plain training
  bit for bit.
- Their warm-up formula multiplies the already reduced ratio, so the zero of the first step lasts the whole first
  epoch and the full ratios apply from the second. avvp builds that effective schedule directly: denoising starts
  at epoch `denoise_from_epoch` (default 2).
- Ties between equal losses are broken by the batch order (a stable sort); theirs are unspecified.
- With modality labels (`--modality-labels`, MA's) as the starting targets, a modality's own loss is against its
  target, and the other modality's loss, which ranks the candidates, is against the weak label: the audio of a
  visual positive is ranked as the audio of a weakly labelled video, whatever MA decided about its audio.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from avvp.data.classes import CLASSES, NUM_CLASSES
from avvp.errors import AvvpError
from avvp.models.registry import unwrap
from avvp.objective import label_bce, loss_targets
from avvp.precision import autocast

if TYPE_CHECKING:
    from avvp.recipe import TrainConfig

log = logging.getLogger(__name__)

MODALITIES = ("audio", "visual")
DEFAULT_THRESHOLDS = {"audio": 0.6, "visual": 1.8}  # the authors' a_thres and v_thres


# ------------------------------------------------------------------------------------------------ NOISE.json


@dataclass(frozen=True)
class NoiseRatios:
    """Per class, the share of its weak labels to remove in each modality (NOISE.json)."""

    audio: np.ndarray  # [25] float64 in [0, 1]
    visual: np.ndarray  # [25]
    extra: dict[str, Any]  # what else the file records: thresholds, the estimator, the videos

    def to_json(self) -> str:
        ratios = {m: {name: float(v) for name, v in zip(CLASSES, getattr(self, m))} for m in MODALITIES}
        return json.dumps(ratios | self.extra, indent=2) + "\n"


def read_noise_ratios(path: str | Path) -> NoiseRatios:
    """Read NOISE.json; a missing or unknown class, a ratio that is not a number in [0, 1], or a file that is not
    such JSON is one AvvpError naming the file (and the class)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AvvpError(f"{path}: noise-ratio file not found (`avvp estimate-noise` writes one)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AvvpError(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise AvvpError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(record, dict):
        raise AvvpError(f"{path}: expected an object with 'audio' and 'visual', found {type(record).__name__}")
    ratios = {modality: _class_ratios(path, record, modality) for modality in MODALITIES}
    extra = {key: value for key, value in record.items() if key not in MODALITIES}
    return NoiseRatios(ratios["audio"], ratios["visual"], extra)


def _class_ratios(path: Path, record: dict, modality: str) -> np.ndarray:
    """One modality's 25 ratios, in class order, checked."""
    table = record.get(modality)
    if not isinstance(table, dict):
        raise AvvpError(f"{path}: no '{modality}' object of class ratios")
    unknown = sorted(set(table) - set(CLASSES))
    if unknown:
        raise AvvpError(f"{path}: {modality}: unknown class {unknown[0]!r} (the 25 LLP class names)")
    missing = [name for name in CLASSES if name not in table]
    if missing:
        raise AvvpError(f"{path}: {modality}: class {missing[0]} is missing ({len(missing)} of 25 missing)")
    for name in CLASSES:
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise AvvpError(f"{path}: {modality}: {name}: ratio {value!r} is not a number in [0, 1]")
    return np.array([float(table[name]) for name in CLASSES])


# ------------------------------------------------------------------------------------------------ estimation


def class_means(probs: np.ndarray, batch_size: int) -> np.ndarray:
    """The mean of per-batch means of [N, 25] probabilities taken in batches of `batch_size` (the last batch may
    be smaller and weighs as much as any other, as in the authors' code)."""
    means = [probs[start : start + batch_size].mean(axis=0) for start in range(0, len(probs), batch_size)]
    return np.mean(means, axis=0)


def noise_ratios(
    probs: np.ndarray, target: np.ndarray, labels: np.ndarray, threshold: float, batch_size: int
) -> np.ndarray:
    """One modality's ratios [25]: the share of the videos labelled c whose p[c] x target[c] falls below
    `threshold` x the mean of p[c] (`class_means`); 0 for a class no video carries.

    Args:
        probs: [N, 25] the estimator's video-level probabilities of the modality (p_a or p_v)
        target: [N, 25] the modality's training target (audio: y; visual: the smoothed 0.9 y + 0.05)
        labels: [N, 25] the weak labels y (0/1)
    """
    mean = class_means(probs, batch_size)  # [25]
    labelled = np.asarray(labels) > 0
    noisy = labelled & (probs * target < threshold * mean)
    counts = labelled.sum(axis=0)
    return np.divide(noisy.sum(axis=0), counts, out=np.zeros(NUM_CLASSES), where=counts > 0)


def estimate_ratios(
    audio_probs: np.ndarray,
    visual_probs: np.ndarray,
    labels: np.ndarray,
    *,
    visual_target: tuple[float, float] = (0.9, 0.05),
    thresholds: dict[str, float] = DEFAULT_THRESHOLDS,
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """The audio and visual ratios [25] each from an estimator's p_a and p_v [N, 25] on the training videos."""
    labels = np.asarray(labels, dtype=np.float64)
    scale, shift = visual_target
    audio = noise_ratios(audio_probs, labels, labels, thresholds["audio"], batch_size)
    visual = noise_ratios(visual_probs, scale * labels + shift, labels, thresholds["visual"], batch_size)
    return audio, visual


def true_noise_shares(labels: np.ndarray, audio_truth: np.ndarray, visual_truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per class, the share of its weak labels that the dense truth says are absent in each modality (LLP-Synth's
    visible-only labels for audio, its audible-only ones for visual): what an ideal estimator's ratios would be."""
    labelled = np.asarray(labels) > 0
    counts = labelled.sum(axis=0)
    shares = {}
    for modality, truth in (("audio", audio_truth), ("visual", visual_truth)):
        present = truth.any(axis=1) if truth.ndim == 3 else truth
        absent = (labelled & ~present).sum(axis=0)
        shares[modality] = np.divide(absent, counts, out=np.zeros(NUM_CLASSES), where=counts > 0)
    return shares


# ------------------------------------------------------------------------------------------------ the rule


def _ranks(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """Each entry's position [B, 25] when each column is sorted (stable: equal values keep the batch order)."""
    order = torch.sort(values, dim=0, descending=descending, stable=True).indices  # [B, 25]
    positions = torch.arange(values.shape[0], device=values.device).unsqueeze(1).expand_as(order)
    return torch.empty_like(order).scatter_(0, order, positions)


def _selected(own: torch.Tensor, other: torch.Tensor, positives: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Among the positives of each class: those whose own loss is among the n largest AND whose other-modality
    loss is among the n smallest, n = floor(ratio x positives). Tensor operations only (no host sync)."""
    n = torch.floor(ratio * positives.sum(dim=0))  # [25]
    largest_own = _ranks(own.masked_fill(~positives, -math.inf), descending=True) < n
    smallest_other = _ranks(other.masked_fill(~positives, math.inf), descending=False) < n
    return positives & largest_own & smallest_other


def removal_masks(
    losses: dict[str, torch.Tensor], positives: dict[str, torch.Tensor], ratios: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """JoMoLD's rule on one batch: the labels to remove in each modality, bool [B, 25] each.

    Args:
        losses: "audio" and "visual" [B, 25], each label's BCE loss in that modality (against its target), and
            "audio_weak", "visual_weak" [B, 25], against the weak labels (the other modality's ranking)
        positives: "audio", "visual" [B, 25] bool, the videos whose target in that modality is above 0.5
        ratios: "audio", "visual" [25] (0 where nothing is to be removed)
    """
    return {
        "visual": _selected(losses["visual"], losses["audio_weak"], positives["visual"], ratios["visual"]),
        "audio": _selected(losses["audio"], losses["visual_weak"], positives["audio"], ratios["audio"]),
    }


class Denoiser:
    """JoMoLD inside training: turns a batch's labels into (weak, audio, visual) rows [B, 3, 25] with the labels
    `removal_masks` removes, and counts the removals (against the modality truth, where known) for metrics.jsonl.

    `set_epoch` switches it on from `from_epoch` (before, the ratios are multiplied by 0: the rule still runs and
    removes nothing). The ranking pass is the model's cross-modal-free forward in eval mode, without gradients.
    """

    def __init__(
        self,
        ratios: NoiseRatios,
        config: TrainConfig,
        device: torch.device,
        precision: str,
        truth: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.config, self.device, self.precision = config, device, precision
        # float64, as the authors' code multiplies its ratios: n = floor(ratio x positives) to the same integer
        self.ratios = {m: torch.as_tensor(getattr(ratios, m), dtype=torch.float64, device=device) for m in MODALITIES}
        self.active = torch.zeros((), device=device)  # 1 from `from_epoch` on
        # present[m]: [N, 25] bool, the modality truth of the training videos (None: unknown)
        self.present = (
            None if truth is None else {m: torch.as_tensor(t, device=device) for m, t in zip(MODALITIES, truth)}
        )
        self.counts = torch.zeros(4, dtype=torch.float64, device=device)  # removed a, v; of them truly absent a, v

    def removes_in(self, epoch: int) -> bool:
        """Whether the rule removes labels in `epoch` (from `denoise_from_epoch` on)."""
        return epoch >= self.config.denoise_from_epoch

    def set_epoch(self, epoch: int) -> None:
        self.active.fill_(1.0 if self.removes_in(epoch) else 0.0)

    def __call__(
        self, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """The batch's (weak, audio, visual) rows [B, 3, 25] after removal; `index`: its videos' rows."""
        targets = loss_targets(labels, self.config)
        weak = loss_targets(targets.video, self.config)  # the targets the weak labels alone give (smoothed visual)
        output = self._ranking_pass(model, inputs)
        losses = {
            "audio": label_bce(output.p_a, targets.audio),
            "visual": label_bce(output.p_v, targets.visual),
            "audio_weak": label_bce(output.p_a, weak.audio),
            "visual_weak": label_bce(output.p_v, weak.visual),
        }
        positives = {"audio": targets.audio > 0.5, "visual": targets.visual > 0.5}
        ratios = {m: self.ratios[m] * self.active for m in MODALITIES}
        removed = removal_masks(losses, positives, ratios)
        self._count(removed, index)
        audio, visual = (labels, labels) if labels.dim() == 2 else (labels[:, 1], labels[:, 2])
        return torch.stack([targets.video, audio * ~removed["audio"], visual * ~removed["visual"]], dim=1)

    def _ranking_pass(self, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
        inner = unwrap(model)
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.precision):
                return inner(*inputs, cross_modal=False)
        finally:
            inner.train(was_training)

    def _count(self, removed: dict[str, torch.Tensor], index: torch.Tensor) -> None:
        counts = [removed[m].sum() for m in MODALITIES]
        if self.present is not None:
            counts += [(removed[m] & ~self.present[m].index_select(0, index)).sum() for m in MODALITIES]
        else:
            counts += [torch.zeros((), device=self.device, dtype=counts[0].dtype)] * 2
        self.counts += torch.stack(counts).double()

    def take_counts(self) -> list[float]:
        """The epoch's counts [removed audio, removed visual, truly absent of them: audio, visual], then reset."""
        values = self.counts.tolist()
        self.counts.zero_()
        return values


def check_supported(config: TrainConfig) -> None:
    """Refuse, in one line, what `--noise-ratios` does not support: a model without a cross-modal-free form (the
    ranking pass needs one), --cuda-graphs, --compile, --stream. Stacked runs (`avvp sweep --stack`) and DDP are
    supported."""
    from avvp.models.registry import get_spec

    spec = get_spec(config.model)
    if not spec.cross_modal_free:
        raise AvvpError(
            f"--noise-ratios: {spec.title} has no cross-modal-free form, which JoMoLD's ranking pass runs "
            "(register the model with cross_modal_free=True and a forward taking cross_modal=False)"
        )
    unsupported = [flag for flag, on in (("--cuda-graphs", config.cuda_graphs), ("--compile", config.compile),
                                         ("--stream", config.stream)) if on]  # fmt: skip
    if unsupported:
        raise AvvpError(f"--noise-ratios is not supported with {', '.join(unsupported)}; train without it")
    if config.denoise_from_epoch < 1:
        raise AvvpError(f"--denoise-from-epoch {config.denoise_from_epoch}: epochs count from 1")


# ------------------------------------------------------------------------------------------------ estimate-noise


def estimate_noise(
    checkpoint: str | Path,
    features: str | Path,
    annotations: str | Path,
    out: str | Path,
    *,
    thresholds: dict[str, float] = DEFAULT_THRESHOLDS,
    batch_size: int = 128,
    max_train_videos: int | None = None,
    device: torch.device | str = "cpu",
    skip_bad_rows: bool = False,
    assign: dict[str, str | None] | None = None,
) -> NoiseRatios:
    """JoMoLD's noise ratios from the estimator `checkpoint` (ours or the authors'), run in its cross-modal-free
    form over the training split (its first `max_train_videos`); writes NOISE.json to `out` and returns it. For
    LLP-Synth, the file also records the true per-class shares of weak labels absent in each modality."""
    from avvp.checkpoint import load_model
    from avvp.data.modality_labels import file_sha256
    from avvp.data.splits import load_split_data
    from avvp.data.synth import training_truth
    from avvp.inference import predict
    from avvp.models.registry import get_spec
    from avvp.utils import atomic_write_text

    model, info = load_model(checkpoint, map_location=device, **(assign or {}))
    spec = get_spec(info["model"])
    if not spec.cross_modal_free:
        raise AvvpError(f"{checkpoint}: {spec.title} has no cross-modal-free form, which the estimator runs")
    trained_cross_modal = info["cross_modal"] if info["cross_modal_recorded"] else None  # None: the file does not say
    if trained_cross_modal:
        log.warning("%s was trained with cross-modal exchange; JoMoLD's estimator is trained without it "
                    "(avvp train --no-cross-modal)", checkpoint)  # fmt: skip
    model.cross_modal = False  # every forward of `predict` is the cross-modal-free form
    data = load_split_data(
        Path(features), Path(annotations), "train", limit=max_train_videos, skip_bad_rows=skip_bad_rows
    )
    probs = predict(model, data.features, batch_size=batch_size, device=device, names=data.split.filenames)
    labels = data.split.labels
    audio, visual = estimate_ratios(
        probs["audio_video"], probs["visual_video"], labels, thresholds=thresholds, batch_size=batch_size
    )
    extra: dict[str, Any] = {
        "thresholds": dict(thresholds),
        "estimator": {"checkpoint": str(Path(checkpoint).resolve()), "sha256": file_sha256(checkpoint),
                      "model": info["model"], "format": info["format"], "trained_cross_modal": trained_cross_modal},
        "features": str(Path(features).resolve()),
        "annotations": str(Path(annotations).resolve()),
        "videos": len(labels),
        "batch_size": batch_size,
    }  # fmt: skip
    truth = training_truth(annotations, data.split.filenames, labels)
    if truth is not None:
        shares = true_noise_shares(labels, *truth)
        extra["true_shares"] = {m: {name: float(v) for name, v in zip(CLASSES, shares[m])} for m in MODALITIES}
    ratios = NoiseRatios(audio, visual, extra)
    atomic_write_text(out, ratios.to_json())
    return ratios
