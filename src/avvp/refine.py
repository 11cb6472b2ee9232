"""Modality-aware label refinement by label exchange (Wu & Yang, CVPR 2021, "MA"), for any avvp model.

Every training video has one weak label set for both modalities. A trained base model decides, per video and per
weak label c, whether c is audible and whether it is visible, by exchanging one modality's track with that of a
partner video whose weak labels are disjoint from its own:

- visible? The audio track is replaced by the partner's, the visual track kept. If both the base model's p_v[c]
  and p_a[c] of that exchanged video fall below the class threshold t_v[c], c came from the audio alone: it is
  removed from the video's visual labels.
- audible? The same with the visual track replaced: if p_a[c] and p_v[c] fall below t_a[c], c is removed from
  the audio labels.

The class thresholds scale with how often the base model is wrong about the class: err_m[c] is the share of
training videos where (p_m[c] > 0.5) disagrees with the weak label (m = a or v, on the unexchanged videos), and
t_m[c] = 0.5 * err_m[c] / max_c err_m[c] (0.5: `threshold`; 0 for every class of a model that is never wrong, so
that nothing is removed). Labels are only ever removed. Section by section as the authors' code does it, except
that partners are drawn with a seed (their code draws them unseeded); docs/label-refinement.md says more.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avvp.data.annotations import Split
from avvp.data.classes import CLASSES, NUM_CLASSES
from avvp.data.features import Features
from avvp.data.modality_labels import file_sha256, write_modality_labels
from avvp.data.splits import SplitData, load_split_data
from avvp.data.synth import training_truth
from avvp.inference import predict
from avvp.metrics import token_scores
from avvp.models.registry import forward_kwargs
from avvp.utils import atomic_write_text, output_path

NO_PARTNER = -1  # a video whose weak labels meet those of every other video keeps its labels


def draw_partners(labels: np.ndarray, seed: int, *, chunk: int = 1024) -> np.ndarray:
    """Each video's partner: a video drawn uniformly (seeded) among those whose weak labels are disjoint from its
    own; NO_PARTNER where there is none (a video without labels is disjoint from everything, itself aside).

    Args:
        labels: [N, 25] weak labels, 0/1.
        seed: the partners' seed (the same seed and labels give the same partners).
    Returns:
        [N] int64 row indices.
    """
    present = np.asarray(labels, dtype=np.float32) > 0.5  # [N, 25]
    count = len(present)
    rng = np.random.default_rng(seed)
    partners = np.full(count, NO_PARTNER, dtype=np.int64)
    as_float = present.astype(np.float32)
    for start in range(0, count, chunk):
        overlap = as_float[start : start + chunk] @ as_float.T  # [chunk, N]: shared labels
        disjoint = overlap == 0
        rows = np.arange(start, min(start + chunk, count))
        disjoint[rows - start, rows] = False  # never its own partner
        choices = disjoint.sum(axis=1)
        draws = rng.random(len(rows))
        for offset, row in enumerate(rows):
            if choices[offset]:
                candidates = np.flatnonzero(disjoint[offset])
                partners[row] = candidates[int(draws[offset] * choices[offset])]
    return partners


@dataclass(frozen=True)
class ExchangedScores:
    """The base model's video-level probabilities [N, 25] of each video as it is and with a track exchanged."""

    p_a: np.ndarray  # unexchanged
    p_v: np.ndarray
    audio_exchanged_p_a: np.ndarray  # the partner's audio, the video's own visual track (is c visible?)
    audio_exchanged_p_v: np.ndarray
    visual_exchanged_p_a: np.ndarray  # the video's own audio, the partner's visual track (is c audible?)
    visual_exchanged_p_v: np.ndarray


@torch.inference_mode()
def exchange_scores(
    model: nn.Module,
    features: Features,
    partners: np.ndarray,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> ExchangedScores:
    """Run `model` (eval mode, fp32) on every video, on it with the partner's audio and on it with the partner's
    visual track, in batches of `batch_size` videos (three forward passes of each batch, as one). A video without a
    partner is scored unexchanged."""
    device = torch.device(device)
    model.eval()
    options = forward_kwargs(model)  # the cross-modal-free form of a run trained in it
    own = np.arange(len(partners))
    partners = np.where(partners == NO_PARTNER, own, partners)
    parts: list[list[np.ndarray]] = [[] for _ in range(6)]
    for start in range(0, len(partners), batch_size):
        rows, other = own[start : start + batch_size], partners[start : start + batch_size]
        size = len(rows)
        inputs = (  # [3B, ...]: as it is; with the partner's audio; with the partner's visual track
            np.concatenate([features.audio[rows], features.audio[other], features.audio[rows]]),
            np.concatenate([features.res152[rows], features.res152[rows], features.res152[other]]),
            np.concatenate([features.r2plus1d[rows], features.r2plus1d[rows], features.r2plus1d[other]]),
        )
        output = model(*(torch.as_tensor(a, dtype=torch.float32, device=device) for a in inputs), **options)
        for third in range(3):
            for offset, probs in enumerate((output.p_a, output.p_v)):
                parts[2 * third + offset].append(probs[third * size : (third + 1) * size].float().cpu().numpy())
    joined = [np.concatenate(p) if p else np.zeros((0, NUM_CLASSES), np.float32) for p in parts]
    return ExchangedScores(*joined)


def class_thresholds(probs: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5, cut: float = 0.5) -> tuple:
    """The base model's per-class error of one modality on the training videos and the class thresholds.

    err[c] = share of videos where (probs[:, c] > cut) differs from the weak label; thresholds = threshold *
    err / max(err), all 0 when the model is never wrong.

    Returns:
        (err [25], thresholds [25]) float64.
    """
    wrong = (np.asarray(probs) > cut) != (np.asarray(labels) > 0.5)  # [N, 25]
    err = wrong.mean(axis=0) if len(wrong) else np.zeros(wrong.shape[1])
    top = err.max(initial=0.0)
    return err, (threshold * err / top if top > 0 else np.zeros_like(err))


@dataclass(frozen=True)
class Refinement:
    """Refined labels [N, 25] bool (subsets of the weak labels) and what decided them."""

    audio: np.ndarray
    visual: np.ndarray
    audio_thresholds: np.ndarray  # [25]
    visual_thresholds: np.ndarray  # [25]


def refine(
    labels: np.ndarray,
    scores: ExchangedScores,
    audio_thresholds: np.ndarray,
    visual_thresholds: np.ndarray,
    has_partner: np.ndarray,
) -> Refinement:
    """The decisions: weak label c leaves the visual labels when, with the audio exchanged, both p_v[c] and p_a[c]
    fall below visual_thresholds[c]; it leaves the audio labels when, with the visual track exchanged, both p_a[c]
    and p_v[c] fall below audio_thresholds[c]. Videos without a partner keep their labels."""
    weak = np.asarray(labels) > 0.5  # [N, 25]
    exchanged = np.asarray(has_partner, dtype=bool)[:, None]  # [N, 1]
    not_visible = (scores.audio_exchanged_p_v < visual_thresholds) & (scores.audio_exchanged_p_a < visual_thresholds)
    not_audible = (scores.visual_exchanged_p_a < audio_thresholds) & (scores.visual_exchanged_p_v < audio_thresholds)
    return Refinement(
        audio=weak & ~(not_audible & exchanged),
        visual=weak & ~(not_visible & exchanged),
        audio_thresholds=np.asarray(audio_thresholds),
        visual_thresholds=np.asarray(visual_thresholds),
    )


# ------------------------------------------------------------------------------------------------ a whole split


def side_files(out: Path) -> tuple[Path, Path]:
    """The evidence (CSV) and summary (JSON) files written beside a modality-label file."""
    return out.with_name(out.stem + ".evidence.csv"), out.with_name(out.stem + ".json")


def refine_split(
    checkpoint: str | Path,
    features: str | Path,
    annotations: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    seed: int = 0,
    threshold: float = 0.5,
    error_cut: float = 0.5,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    skip_bad_rows: bool = False,
    assign: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Refine the weak labels of every video of `split` with the base model `checkpoint` (ours or the authors');
    the class thresholds come from the model's errors on the training split. Writes `out` (the modality labels),
    the evidence of every decision and a summary (`side_files`); returns the summary. `assign`: MGN's assignment
    kinds for an authors' checkpoint (`load_model`'s unimodal_assign / crossmodal_assign)."""
    from avvp.checkpoint import load_model

    started = time.perf_counter()
    out, device = Path(out), torch.device(device)
    output_path(out)
    model, info = load_model(checkpoint, map_location=device, **(assign or {}))
    load = functools.partial(load_split_data, Path(features), Path(annotations), skip_bad_rows=skip_bad_rows)
    data = load(split)
    exchange_started = time.perf_counter()
    partners = draw_partners(data.split.labels, seed)
    scores = exchange_scores(model, data.features, partners, batch_size=batch_size, device=device)
    exchange_seconds = time.perf_counter() - exchange_started
    train = data if split == "train" else load("train")
    train_probs = (scores.p_a, scores.p_v) if split == "train" else _unexchanged(model, train, batch_size, device)
    train_labels = train.split.labels
    audio_err, audio_thresholds = class_thresholds(train_probs[0], train_labels, threshold=threshold, cut=error_cut)
    visual_err, visual_thresholds = class_thresholds(train_probs[1], train_labels, threshold=threshold, cut=error_cut)
    result = refine(data.split.labels, scores, audio_thresholds, visual_thresholds, partners != NO_PARTNER)
    names, weak_count = data.split.filenames, int((data.split.labels > 0.5).sum())
    evidence_path, summary_path = side_files(out)
    _write_evidence(evidence_path, names, data.split.labels, partners, scores, result)
    summary = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": file_sha256(checkpoint),
        "model": info["model"],
        "features": str(Path(features).resolve()),
        "annotations": str(Path(annotations).resolve()),
        "split": split,
        "videos": len(names),
        "seed": seed,
        "threshold": threshold,
        "error_cut": error_cut,
        "classes": list(CLASSES),
        "base_error": {"audio": audio_err.tolist(), "visual": visual_err.tolist()},
        "thresholds": {"audio": audio_thresholds.tolist(), "visual": visual_thresholds.tolist()},
        "labels": weak_count,
        "removed": {"audio": weak_count - int(result.audio.sum()), "visual": weak_count - int(result.visual.sum())},
        "no_partner": [names[row] for row in np.flatnonzero(partners == NO_PARTNER)],
        "exchange_seconds": exchange_seconds,
        "seconds": time.perf_counter() - started,
        "quality": _quality(data.split, annotations, result),
        "files": {"labels": out.name, "evidence": evidence_path.name},
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    write_modality_labels(out, names, result.audio, result.visual)  # last: where it exists, so do the side files
    return summary


def _unexchanged(model: nn.Module, data: SplitData, batch_size: int, device: torch.device) -> tuple:
    """p_a and p_v of the unexchanged training videos (for the class thresholds when another split is refined)."""
    names = data.split.filenames
    predictions = predict(model, data.features, batch_size=batch_size, device=device, names=names, where="base model")
    return predictions["audio_video"], predictions["visual_video"]


def _write_evidence(
    path: Path, names: list[str], labels: np.ndarray, partners: np.ndarray, scores: ExchangedScores, result: Refinement
) -> None:
    """One row per (video, weak label): the partner, the exchanged probabilities, the thresholds, the decisions."""
    header = (
        "filename\tclass\tpartner\taudible\tvisual_exchanged_p_a\tvisual_exchanged_p_v\taudio_threshold\t"
        "visible\taudio_exchanged_p_v\taudio_exchanged_p_a\tvisual_threshold\n"
    )
    rows = []
    for row, column in zip(*np.nonzero(np.asarray(labels) > 0.5)):
        partner = names[partners[row]] if partners[row] != NO_PARTNER else ""
        values = (
            int(result.audio[row, column]),
            f"{scores.visual_exchanged_p_a[row, column]:.6f}",
            f"{scores.visual_exchanged_p_v[row, column]:.6f}",
            f"{result.audio_thresholds[column]:.6f}",
            int(result.visual[row, column]),
            f"{scores.audio_exchanged_p_v[row, column]:.6f}",
            f"{scores.audio_exchanged_p_a[row, column]:.6f}",
            f"{result.visual_thresholds[column]:.6f}",
        )
        rows.append("\t".join([names[row], CLASSES[column], partner, *map(str, values)]) + "\n")
    atomic_write_text(path, header + "".join(rows))


def _quality(split: Split, annotations: str | Path, result: Refinement) -> dict[str, Any] | None:
    """Precision, recall and F1 of the refined labels and of the weak labels taken as both modalities, against the
    modality labels the truth implies (dense annotations of val/test; LLP-Synth's regenerated training truth)."""
    truth, source = (split.audio, split.visual), "the dense annotations"
    if split.audio is None:
        truth, source = training_truth(annotations, split.filenames, split.labels), "LLP-Synth truth (from its seed)"
    if truth is None:
        return None
    weak = np.asarray(split.labels, dtype=np.float32)
    return {
        "truth": source,
        "weak": {"audio": token_scores(weak, truth[0]), "visual": token_scores(weak, truth[1])},
        "refined": {
            "audio": token_scores(result.audio.astype(np.float32), truth[0]),
            "visual": token_scores(result.visual.astype(np.float32), truth[1]),
        },
    }
