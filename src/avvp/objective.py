"""The training objective: named loss terms, each per video or per step, each with a weight (the authors' recipe by default).

Every model trains on the three video-level BCE terms below (`p_av`, `p_a`, `p_v`); a model adds its own terms
through the registry (`register_model(..., loss_terms=...)`: MGN's class-token cross-entropies). The loss of a step
is

    sum over per-sample terms k of  w_k * (sum over the batch of term_k) / global batch size
    + sum over per-step terms k of  w_k * term_k

with each weight its term's default (the authors' weights: all 1) unless `--loss-weight NAME=W` sets it. A term of
weight 0 is not computed at all, so a run trains exactly as without it (not under torchrun: the weights only that
term trains would get no gradient, which DDP cannot synchronise; that is refused in one line). Under DDP the per-sample sum is over the
process's shard, times the world size (DDP averages gradients over processes), which equals the global mean.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from avvp.data.classes import NUM_CLASSES
from avvp.errors import AvvpError
from avvp.models import ParseOutput
from avvp.models.registry import SAMPLE, LossTerm, get_spec, resolve

if TYPE_CHECKING:
    from avvp.recipe import TrainConfig

PROB_EPS = 1e-7  # probabilities are clamped to [eps, 1 - eps] before BCE, as in the authors' code


def label_bce(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each label's BCE on clamped probabilities: [B, C] -> [B, C] (JoMoLD ranks these).

    Written out rather than F.binary_cross_entropy (the same value: the clamp keeps the logs above -16.2, inside
    its -100 floor) because that kernel kills a CUDA process with a device assert on a NaN input; here a NaN
    reaches the loss sums and `train` stops with a clear error instead.
    """
    probs = probs.float().clamp(PROB_EPS, 1 - PROB_EPS)
    return -(target * torch.log(probs) + (1 - target) * torch.log1p(-probs))


def clamp_bce(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE (mean over classes, `label_bce`): [B, C] -> [B]."""
    return label_bce(probs, target).mean(dim=1)


@dataclass
class LossTargets:
    """What the loss terms score against, each [B, 25]: the targets of p_av, p_a and p_v, and the labels given."""

    video: torch.Tensor  # p_av's target: the weak labels y
    audio: torch.Tensor  # p_a's: y, or the audio labels of a modality-label file
    visual: torch.Tensor  # p_v's: the smoothed 0.9 y + 0.05 (or the smoothed visual labels)
    labels: torch.Tensor  # the batch's labels as stored: [B, 25] weak, or [B, 3, 25] (weak, audio, visual)


def loss_targets(labels: torch.Tensor, config: TrainConfig) -> LossTargets:
    """The targets of p_av, p_a and p_v.

    `labels` are the weak labels y [B, 25] (p_av and p_a against y, p_v against the smoothed 0.9 y + 0.05), or
    [B, 3, 25] rows (weak, audio, visual) with modality labels (`avvp train --modality-labels`): p_av against the
    weak labels, p_a against the audio labels, p_v against the smoothed visual labels, except that a weak label
    removed from the visual labels is a hard 0 there, not the smoothing's 0.05 (as in the authors' code of MA).
    """
    scale, shift = config.visual_target_scale, config.visual_target_shift
    if labels.dim() == 2:
        return LossTargets(labels, labels, scale * labels + shift, labels)
    weak, audio, visual = labels.unbind(1)
    kept = 1 - (weak - visual)  # 0 where a weak label was removed from the visual labels
    return LossTargets(weak, audio, (scale * visual + shift) * kept, labels)


def video_loss(output: ParseOutput, targets: LossTargets) -> torch.Tensor:
    """BCE of p_av against the weak labels [B]."""
    return clamp_bce(output.p_av, targets.video)


def audio_loss(output: ParseOutput, targets: LossTargets) -> torch.Tensor:
    """BCE of p_a against its target [B]."""
    return clamp_bce(output.p_a, targets.audio)


def visual_loss(output: ParseOutput, targets: LossTargets) -> torch.Tensor:
    """BCE of p_v against its smoothed target [B]."""
    return clamp_bce(output.p_v, targets.visual)


def _token_loss(logits: torch.Tensor | None, term: str) -> torch.Tensor:
    if logits is None:
        raise AvvpError(f"loss term {term}: the model's output has no class-token logits")
    return F.cross_entropy(logits.float(), torch.arange(NUM_CLASSES, device=logits.device))


def audio_token_loss(output: ParseOutput, targets: LossTargets) -> torch.Tensor:
    """MGN: cross-entropy of audio class token i classified as class i (a scalar)."""
    return _token_loss(output.audio_token_logits, "audio_tokens")


def visual_token_loss(output: ParseOutput, targets: LossTargets) -> torch.Tensor:
    """MGN: cross-entropy of visual class token i classified as class i (a scalar)."""
    return _token_loss(output.visual_token_logits, "visual_tokens")


CONTRAST_TEMPERATURE = 0.2  # MA's audio-visual contrastive term, as JoMoLD's code computes it
CONTRAST_SMOOTHING = 0.1


def contrastive_loss(output: ParseOutput, targets: LossTargets) -> torch.Tensor:
    """HAN: MA's audio-visual contrastive term (Wu & Yang, CVPR 2021) as JoMoLD's code computes it, per video [B].

    The audio and visual segment features after the hybrid attention (`extras`), L2-normalised: each audio segment
    is scored against the video's 10 visual segments (cosine / 0.2, softmax), its target the visual segment of the
    same second, smoothed (0.9 there, 0.1 / 9 elsewhere); the term is -log of the target-weighted probability,
    -log(sum_j q_j p_j), averaged over the segments (not MA's own -sum_j q_j log p_j, and MA's own code contrasts
    with the visual features before the attention: docs/jomold.md).
    """
    if "audio_features" not in output.extras or "visual_features" not in output.extras:
        raise AvvpError("loss term contrastive: the model's output has no audio_features / visual_features extras")
    audio = F.normalize(output.extras["audio_features"].float(), dim=-1)  # [B, T, C]
    visual = F.normalize(output.extras["visual_features"].float(), dim=-1)  # [B, T, C]
    probs = (audio @ visual.transpose(1, 2) / CONTRAST_TEMPERATURE).softmax(dim=-1)  # [B, T, T]
    segments = probs.shape[-1]
    eye = torch.eye(segments, device=probs.device)
    target = eye * (1 - CONTRAST_SMOOTHING) + (1 - eye) * CONTRAST_SMOOTHING / (segments - 1)
    return -torch.log((target * probs).sum(dim=-1)).mean(dim=1)


BASE_TERMS = (
    LossTerm("p_av", video_loss, about="BCE of the audio-visual video-level probability against the weak labels"),
    LossTerm("p_a", audio_loss, about="BCE of the audio video-level probability"),
    LossTerm("p_v", visual_loss, about="BCE of the visual video-level probability against smoothed labels"),
)


def model_terms(model_name: str) -> tuple[LossTerm, ...]:
    """Every loss term a model trains on: the base terms, then those it registered."""
    return BASE_TERMS + get_spec(model_name).loss_terms


def resolve_weights(model_name: str, overrides: Mapping[str, float]) -> dict[str, float]:
    """Each term's weight: its default, or the override (`--loss-weight`); an unknown term name is an error."""
    terms = model_terms(model_name)
    known = [term.name for term in terms]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise AvvpError(
            f"--loss-weight {', '.join(unknown)}: not a loss term of {get_spec(model_name).title} "
            f"(its terms: {', '.join(known)})"
        )
    return {term.name: float(overrides.get(term.name, term.weight)) for term in terms}


class Objective:
    """The weighted sum of a model's loss terms; terms of weight 0 are left out (never computed)."""

    def __init__(self, model_name: str, config: TrainConfig, world_size: int = 1) -> None:
        self.config, self.world_size = config, world_size
        weights = resolve_weights(model_name, config.loss_weights)
        self.terms = [(term, resolve(term.fn), weights[term.name]) for term in model_terms(model_name)]
        self.terms = [entry for entry in self.terms if entry[2] != 0]
        self.keys = [term.name for term, _, _ in self.terms]  # the order of `totals`
        self.weights = {term.name: weight for term, _, weight in self.terms}
        if not self.terms:
            raise AvvpError("--loss-weight: every loss term has weight 0, nothing to train")

    def __call__(
        self, output: ParseOutput, labels: torch.Tensor, global_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise, and the batch's per-video sums of each term [K] (in the order of `keys`; a
        per-step term counts once per video), for the epoch's means."""
        values = self.terms_of(output, labels)
        weighted = {
            name: value if self.weights[name] == 1 else self.weights[name] * value for name, value in values.items()
        }
        per_sample = [weighted[term.name] for term, _, _ in self.terms if term.per == SAMPLE]
        per_step = [weighted[term.name] for term, _, _ in self.terms if term.per != SAMPLE]
        loss = functools.reduce(operator.add, per_sample).sum() / global_size * self.world_size if per_sample else 0
        for value in per_step:
            loss = loss + value
        local = len(labels)
        totals = [value.sum() if value.dim() else value * local for value in values.values()]
        return loss, torch.stack(totals)

    def terms_of(self, output: ParseOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term's value (unweighted) on one batch: [B] per sample, a scalar per step."""
        targets = loss_targets(labels, self.config)
        return {term.name: fn(output, targets) for term, fn, _ in self.terms}

    def total(self, means: Mapping[str, float]) -> float:
        """`loss.total` of metrics.jsonl: the weighted sum of the terms' epoch means."""
        return sum(self.weights[key] * means[key] for key in self.keys)
