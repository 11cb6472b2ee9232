"""LLP-Synth: a generator of weakly-labelled audio-visual data in exactly the LLP file layout.

The real LLP features cannot be downloaded everywhere, so this module writes a stand-in with the real
dataset's shapes and label structure: which classes occur together, how often an event is heard, seen or
both, how much of the 10 s it covers and in how many runs (all measured on the real LLP annotations and
stored in the tables below). Features are made like those of pretrained networks (generator version 2): class
evidence, a per-video scene and noise in a small latent space per modality, mapped into each feature space by
a fixed random layer (non-negative for the CNN features). The knobs in `SynthConfig` were calibrated so that
HAN and MGN, trained with the authors' recipe, score near their published LLP results (docs/synth.md): LLP-Synth
behaves like LLP for those two models, so results on it are no evidence about real LLP. Every avvp command runs
on the output unchanged.

Randomness: every video draws from its own generators, seeded from (master seed, split, index), so the
output is byte-identical for a seed whatever the number of workers, and labels can be sampled without
features (`sample_labels`) exactly as `generate` would write them.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from avvp.config import ConfigMixin
from avvp.data.annotations import video_id
from avvp.data.classes import CLASSES, NUM_CLASSES, NUM_SEGMENTS
from avvp.errors import AvvpError

SPLITS: tuple[str, ...] = ("train", "val", "test")
WEAK_FILES = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
FULL_FILE = "AVVP_dataset_full.csv"
EVAL_FILES = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
FEATURE_SHAPES = {"vggish": (10, 128), "res152": (80, 2048), "r2plus1d_18": (10, 512)}
CONFIG_FILE = "synth.json"  # the resolved SynthConfig, beside the LLP files (lets callers reuse a cached set)
FRAMES_PER_SEGMENT = 8  # ResNet-152 frames per second

# ---------------------------------------------------------------------------------------------------------------
# Label structure of real LLP. Class frequencies from the 10,000 train weak labels; everything else from the
# 1,849 val + test videos with their dense eval files (pairs whose class has no dense event left out).
# Columns: (train frequency, P(audible and visible), P(audible only), P(visible only),
#           audio P(all 10 segments), audio mean length when partial,
#           visual P(all 10 segments), visual mean length when partial).
# Partial mean lengths are shrunk towards 5 with 5 pseudo-events (few partial events for some classes).
# fmt: off
_CLASS_TABLE: dict[str, tuple[float, ...]] = {
    "Speech":                 (0.499, 0.223, 0.774, 0.002, 0.142, 4.500, 0.119, 4.116),
    "Car":                    (0.062, 0.782, 0.015, 0.203, 0.840, 5.864, 0.763, 6.028),
    "Cheering":               (0.053, 0.383, 0.578, 0.039, 0.366, 4.349, 0.537, 4.500),
    "Dog":                    (0.076, 0.798, 0.077, 0.125, 0.231, 4.975, 0.858, 6.296),
    "Cat":                    (0.019, 0.696, 0.036, 0.268, 0.073, 4.302, 0.796, 5.875),
    "Frying_(food)":          (0.034, 0.922, 0.062, 0.016, 0.905, 4.818, 0.817, 4.750),
    "Basketball_bounce":      (0.045, 0.772, 0.051, 0.177, 0.062, 3.955, 0.040, 4.000),
    "Fire_alarm":             (0.022, 0.833, 0.167, 0.000, 0.444, 5.600, 0.433, 5.773),
    "Chainsaw":               (0.030, 0.978, 0.022, 0.000, 0.689, 5.421, 0.659, 5.900),
    "Cello":                  (0.060, 0.769, 0.190, 0.041, 0.802, 6.286, 0.806, 5.458),
    "Banjo":                  (0.019, 0.773, 0.182, 0.045, 0.738, 4.812, 0.861, 4.700),
    "Singing":                (0.117, 0.687, 0.309, 0.004, 0.395, 6.086, 0.309, 5.854),
    "Chicken_rooster":        (0.044, 0.878, 0.071, 0.051, 0.409, 5.267, 0.868, 5.294),
    "Violin_fiddle":          (0.146, 0.805, 0.169, 0.026, 0.649, 6.452, 0.802, 5.395),
    "Vacuum_cleaner":         (0.050, 0.929, 0.061, 0.010, 0.755, 5.034, 0.796, 6.292),
    "Baby_laughter":          (0.015, 0.781, 0.219, 0.000, 0.188, 5.161, 0.280, 5.435),
    "Accordion":              (0.044, 0.728, 0.259, 0.012, 0.800, 6.000, 0.833, 4.667),
    "Lawn_mower":             (0.022, 0.909, 0.068, 0.023, 0.605, 5.318, 0.829, 6.417),
    "Motorcycle":             (0.041, 0.866, 0.049, 0.085, 0.720, 5.000, 0.718, 5.926),
    "Helicopter":             (0.059, 0.893, 0.087, 0.019, 0.842, 5.524, 0.755, 5.714),
    "Acoustic_guitar":        (0.050, 0.813, 0.084, 0.103, 0.612, 6.508, 0.859, 4.880),
    "Telephone_bell_ringing": (0.010, 0.579, 0.421, 0.000, 0.263, 4.737, 0.364, 5.167),
    "Baby_cry_infant_cry":    (0.043, 0.816, 0.171, 0.013, 0.387, 6.863, 0.556, 6.364),
    "Blender":                (0.029, 0.982, 0.000, 0.018, 0.309, 5.233, 0.857, 5.692),
    "Clapping":               (0.016, 0.543, 0.409, 0.047, 0.273, 4.151, 0.320, 3.964),
}
# fmt: on
_TABLE = np.array([_CLASS_TABLE[name] for name in CLASSES])  # [25, 8], rows in class order
_SPEECH = CLASSES.index("Speech")
_OTHER_CLASSES = np.array([c for c in range(NUM_CLASSES) if c != _SPEECH])  # [24]
_OTHER_WEIGHTS = _TABLE[_OTHER_CLASSES, 0] / _TABLE[_OTHER_CLASSES, 0].sum()  # [24]
_MODALITY_PROBS = _TABLE[:, 1:4] / _TABLE[:, 1:4].sum(1, keepdims=True)  # [25, 3] both / audio only / visual only
# Number of labelled classes other than Speech per video (val + test counts 9, 1426, 326, 74, 14 for 0..4+) and
# P(Speech is also labelled | that number) (820/1426, 129/326, 31/88 for 3+); with none, Speech is the label.
_OTHER_COUNT_PROBS = np.array([9, 1426, 326, 74, 14]) / 1849
_SPEECH_GIVEN_COUNT = np.array([1.0, 0.575, 0.396, 0.352, 0.352])
# Partial events split into several runs: P(a second run), P(each further run), per modality (val + test,
# events covering 2 to 9 segments: audio 679 of 1,682 have 2+ runs, 136 of those 3+; visual 234 of 747, 35).
_RUN_PROBS = {"audio": (0.40, 0.20), "visual": (0.31, 0.15)}
# An audible and visible event is often one event seen and heard at the same time: in LLP val + test, 60 % of
# such (video, class) pairs have identical audio and visual segments, against ~38 % if timings were drawn
# independently. With this probability both modalities share one mask (drawn from either modality's law); 0.5
# brings the broadcast oracle's audio-visual score to within ~1 point of real LLP's (0.35: 2 points below).
_SYNC_PROB = 0.5
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}
_LABEL_STREAM, _FEATURE_STREAM, _ID_STREAM, _PATTERN_STREAM = 0, 1, 2, 3


GENERATOR_VERSION = (
    2  # the feature model; 1 was the mixture of per-class patterns in feature space (docs/synth.md, history)
)


@dataclass(frozen=True)
class SynthConfig(ConfigMixin):
    """Sizes, seed and every knob of the LLP-Synth generator (defaults: the documented LLP-Synth v2)."""

    train: int = 3000  # training videos (weak labels only); LLP has 10,000 (~7 GB of features)
    val: int = 300  # validation videos (weak labels + dense eval rows); LLP has 649
    test: int = 600  # test videos (weak labels + dense eval rows); LLP has 1,200
    seed: int = 0  # master seed: mappings, prototypes, labels and features all derive from it
    version: int = GENERATOR_VERSION  # the feature model; only the current version can be generated
    # Features are made in a small latent space per modality (audio; visual, shared by ResNet-152 and R(2+1)D)
    # and mapped into each feature space by a fixed random layer, like features of a pretrained network: low
    # intrinsic dimension, class evidence concentrated in a few directions. The defaults were calibrated on HAN
    # and MGN together (the authors' recipe; docs/synth.md lists every run).
    latent_dim: int = 64  # dimension of each modality's latent space
    audio_strength: float = 1.0  # audio class prototype entries (unit normal) times this, in units of `noise`
    visual_strength: float = 1.0  # visual class prototype entries times this, in units of `noise`
    noise: float = 1.0  # std of the latent noise of every segment (and of every ResNet-152 frame)
    scene: float = 1.2  # std of a per-video latent scene vector shared by all its segments (per modality)
    class_similarity: float = 0.3  # share of a common component in every class prototype (0: independent, <1)
    cross_modal_leakage: float = 0.5  # an event appears in the other modality's latent at this fraction
    temporal_context: float = 0.3  # a class present in a video shows at this fraction in its other segments
    intermittency: float = 0.6  # chance that a segment inside an event carries only the context-level evidence
    amplitude_min: float = 0.4  # each (video, class, modality) event strength is uniform in [amplitude_min, 1]
    frame_drift: float = 0.5  # std of a smooth within-video latent drift of the ResNet-152 frames (camera motion)
    visual_threshold: float = 0.5  # offset subtracted before the non-negative activation (higher: sparser)
    feature_noise: float = 0.1  # std of independent noise added in every feature space after the mapping

    def __post_init__(self) -> None:
        if self.version != GENERATOR_VERSION:
            raise AvvpError(
                f"SynthConfig.version = {self.version}: this avvp generates LLP-Synth v{GENERATOR_VERSION} only"
            )
        for name in ("train", "val", "test"):
            if getattr(self, name) < 0:
                raise AvvpError(f"SynthConfig.{name} = {getattr(self, name)}: the number of videos must be >= 0")
        if self.latent_dim < 1:
            raise AvvpError(f"SynthConfig.latent_dim = {self.latent_dim}: must be >= 1")
        if not 0.0 <= self.class_similarity < 1.0:
            raise AvvpError(f"SynthConfig.class_similarity = {self.class_similarity}: must be in [0, 1)")
        if not 0.0 <= self.intermittency < 1.0:
            raise AvvpError(f"SynthConfig.intermittency = {self.intermittency}: must be in [0, 1)")
        if not 0.0 < self.amplitude_min <= 1.0:
            raise AvvpError(f"SynthConfig.amplitude_min = {self.amplitude_min}: must be in (0, 1]")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float" and value < 0:
                raise AvvpError(f"SynthConfig.{field.name} = {value}: must be >= 0")

    def sizes(self) -> dict[str, int]:
        """Videos per split, in split order."""
        return {split: getattr(self, split) for split in SPLITS}


@dataclass(frozen=True)
class SynthLabels:
    """Labels of one split, with the fields of `avvp.data.annotations.Split` that matter here."""

    filenames: list[str]  # `<id>_<start>_<end>`
    labels: np.ndarray  # [N, 25] bool, video-level (union of audio and visual)
    audio: np.ndarray  # [N, 10, 25] bool, audible segments
    visual: np.ndarray  # [N, 10, 25] bool, visible segments
    class_order: list[list[int]]  # per video, its classes in the order they were drawn (the CSV order)


class _LabelSet(Protocol):
    labels: np.ndarray
    audio: np.ndarray
    visual: np.ndarray


# ----------------------------------------------------------------------------------------------- labels


def _seed_sequence(seed: int, split: str, index: int, stream: int) -> np.random.SeedSequence:
    """The seed of one video's stream: independent of every other video, split and stream."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(_SPLIT_KEYS[split], index, stream))


def _partial_length(rng: np.random.Generator, mean: float) -> int:
    """A length in 1..9 with the given mean, as broad as uniform at mean 5 (beta-binomial, concentration 2)."""
    alpha = float(np.clip(2.0 * (mean - 1.0) / 8.0, 0.05, 1.95))
    return 1 + int(rng.binomial(8, rng.beta(alpha, 2.0 - alpha)))


def _event_mask(rng: np.random.Generator, p_full: float, partial_mean: float, modality: str) -> np.ndarray:
    """Segments [10] bool of one event: all 10, or `length` segments in one or more runs placed uniformly."""
    mask = np.zeros(NUM_SEGMENTS, dtype=bool)
    if rng.random() < p_full:
        mask[:] = True
        return mask
    length = _partial_length(rng, partial_mean)
    p_second, p_more = _RUN_PROBS[modality]
    runs = 1
    if rng.random() < p_second:
        runs = 2
        while rng.random() < p_more:
            runs += 1
    runs = min(runs, length, NUM_SEGMENTS - length + 1)
    # Run lengths: a uniform composition of `length` into `runs` positive parts.
    cuts = np.sort(rng.choice(np.arange(1, length), runs - 1, replace=False)) if runs > 1 else np.array([], int)
    run_lengths = np.diff(np.concatenate([[0], cuts, [length]]))
    # Gaps: `runs + 1` slots, the inner ones at least 1, spare segments spread uniformly (stars and bars).
    spare = NUM_SEGMENTS - length - (runs - 1)
    bars = np.sort(rng.choice(spare + runs, runs, replace=False))
    gaps = np.diff(np.concatenate([[-1], bars, [spare + runs]])) - 1  # [runs + 1], sums to spare
    gaps[1:-1] += 1
    start = 0
    for run in range(runs):
        start += gaps[run]
        mask[start : start + run_lengths[run]] = True
        start += run_lengths[run]
    return mask


def _video_labels(rng: np.random.Generator) -> tuple[list[int], np.ndarray, np.ndarray]:
    """One video's classes (drawing order) and its audio and visual segment masks [10, 25]."""
    other_count = int(rng.choice(len(_OTHER_COUNT_PROBS), p=_OTHER_COUNT_PROBS))
    classes = [int(c) for c in rng.choice(_OTHER_CLASSES, other_count, replace=False, p=_OTHER_WEIGHTS)]
    if rng.random() < _SPEECH_GIVEN_COUNT[other_count]:
        classes.insert(int(rng.integers(0, len(classes) + 1)), _SPEECH)
    audio = np.zeros((NUM_SEGMENTS, NUM_CLASSES), dtype=bool)  # [T, C]
    visual = np.zeros((NUM_SEGMENTS, NUM_CLASSES), dtype=bool)  # [T, C]
    for c in classes:
        kind = int(rng.choice(3, p=_MODALITY_PROBS[c]))  # 0 both, 1 audible only, 2 visible only
        if kind == 0 and rng.random() < _SYNC_PROB:
            law = (4, "audio") if rng.random() < 0.5 else (6, "visual")
            audio[:, c] = visual[:, c] = _event_mask(rng, _TABLE[c, law[0]], _TABLE[c, law[0] + 1], law[1])
            continue
        if kind in (0, 1):
            audio[:, c] = _event_mask(rng, _TABLE[c, 4], _TABLE[c, 5], "audio")
        if kind in (0, 2):
            visual[:, c] = _event_mask(rng, _TABLE[c, 6], _TABLE[c, 7], "visual")
    return classes, audio, visual


def _video_filename(rng: np.random.Generator) -> str:
    """`<11-char id>_<start>_<end>`: a YouTube-like id and a 10 s window."""
    youtube_id = "".join(_ID_ALPHABET[rng.integers(0, len(_ID_ALPHABET), 11)])
    start = int(rng.integers(0, 300))
    return f"{youtube_id}_{start}_{start + 10}"


def _split_labels(split: str, count: int, seed: int, taken_ids: set[str]) -> SynthLabels:
    """Labels and unique filenames of one split (ids already in `taken_ids` are redrawn, deterministically)."""
    filenames: list[str] = []
    class_order: list[list[int]] = []
    audio = np.zeros((count, NUM_SEGMENTS, NUM_CLASSES), dtype=bool)  # [N, T, C]
    visual = np.zeros((count, NUM_SEGMENTS, NUM_CLASSES), dtype=bool)  # [N, T, C]
    for index in range(count):
        classes, audio[index], visual[index] = _video_labels(
            np.random.default_rng(_seed_sequence(seed, split, index, _LABEL_STREAM))
        )
        id_rng = np.random.default_rng(_seed_sequence(seed, split, index, _ID_STREAM))
        filename = _video_filename(id_rng)
        while video_id(filename) in taken_ids:
            filename = _video_filename(id_rng)
        taken_ids.add(video_id(filename))
        filenames.append(filename)
        class_order.append(classes)
    labels = audio.any(1) | visual.any(1)  # [N, C]
    return SynthLabels(filenames=filenames, labels=labels, audio=audio, visual=visual, class_order=class_order)


def sample_labels(count: int, seed: int = 0, split: str = "test") -> SynthLabels:
    """The labels `generate` writes for the first `count` videos of `split` with this seed, without features.

    Cheap (no features), so label statistics can be checked on many thousands of videos.
    """
    if split not in SPLITS:
        raise AvvpError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    return _split_labels(split, count, seed, set())


def _all_labels(config: SynthConfig) -> dict[str, SynthLabels]:
    """Labels of every split, video ids unique across splits."""
    taken: set[str] = set()
    return {split: _split_labels(split, count, config.seed, taken) for split, count in config.sizes().items()}


def broadcast_oracle(split: _LabelSet) -> tuple[np.ndarray, np.ndarray]:
    """The 'broadcast oracle': each video's true video-level labels on all 10 segments of both modalities.

    A reference row: it knows which classes occur but nothing about when, or whether heard or seen.

    Args:
        split: anything with `.labels` [N, 25] (an annotations `Split` or `SynthLabels`).

    Returns:
        (pred_audio, pred_visual), float32 [N, 10, 25] each, 0/1.
    """
    video = np.asarray(split.labels, dtype=np.float32)  # [N, C]
    segments = np.repeat(video[:, None, :], NUM_SEGMENTS, axis=1)  # [N, T, C]
    return segments, segments.copy()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a [10] mask as (onset, offset) with offset exclusive."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def label_statistics(split: _LabelSet) -> dict[str, Any]:
    """The label statistics LLP-Synth is calibrated on (see docs/synth.md), for LLP or LLP-Synth labels.

    Pairs (video, class) that are labelled but have no dense event (a few in real LLP) are left out of the
    modality shares.
    """
    labels = np.asarray(split.labels, dtype=bool)  # [N, C]
    if len(labels) == 0:
        return {"videos": 0}
    audible = np.asarray(split.audio, dtype=bool).any(1) & labels  # [N, C]
    visible = np.asarray(split.visual, dtype=bool).any(1) & labels  # [N, C]
    annotated = audible | visible
    pairs = max(int(annotated.sum()), 1)
    audio_cover = np.asarray(split.audio, dtype=bool).sum(1)[audible]  # [events]
    visual_cover = np.asarray(split.visual, dtype=bool).sum(1)[visible]
    audio_runs = np.count_nonzero(np.diff(np.asarray(split.audio, dtype=np.int8), axis=1, prepend=0) == 1, axis=1)
    visual_runs = np.count_nonzero(np.diff(np.asarray(split.visual, dtype=np.int8), axis=1, prepend=0) == 1, axis=1)
    return {
        "videos": len(labels),
        "classes_per_video": float(labels.sum(1).mean()),
        "class_frequency": {name: float(f) for name, f in zip(CLASSES, labels.mean(0))},
        "audible_and_visible": float((audible & visible).sum() / pairs),
        "audible_only": float((audible & ~visible).sum() / pairs),
        "visible_only": float((visible & ~audible).sum() / pairs),
        "audio_segments_per_event": float(audio_cover.mean()) if audio_cover.size else 0.0,
        "visual_segments_per_event": float(visual_cover.mean()) if visual_cover.size else 0.0,
        "audio_multi_run_share": float((audio_runs[audible] > 1).mean()) if audible.any() else 0.0,
        "visual_multi_run_share": float((visual_runs[visible] > 1).mean()) if visible.any() else 0.0,
    }


# --------------------------------------------------------------------------------------------- features


@dataclass(frozen=True)
class _Space:
    """A feature space: a fixed random layer from a modality's latent space, `features = act(latent @ weight +
    bias)` (act: identity for VGGish, ReLU for the CNN features)."""

    weight: np.ndarray  # [K, D]
    bias: np.ndarray  # [D]
    non_negative: bool


@dataclass(frozen=True)
class _Model:
    """Dataset-level constants: class prototypes per modality latent and the three feature spaces."""

    audio_prototypes: np.ndarray  # [25, K], scaled by audio_strength
    visual_prototypes: np.ndarray  # [25, K], scaled by visual_strength
    vggish: _Space  # from the audio latent, 128-d
    res152: _Space  # from the visual latent, 2048-d
    r2plus1d: _Space  # from the visual latent, 512-d


def _make_model(config: SynthConfig) -> _Model:
    rng = np.random.default_rng(np.random.SeedSequence(entropy=config.seed, spawn_key=(_PATTERN_STREAM,)))
    shared, own = np.sqrt(config.class_similarity), np.sqrt(1.0 - config.class_similarity)
    k = config.latent_dim

    def prototypes(strength: float) -> np.ndarray:
        common = rng.standard_normal(k)  # [K]
        unit = own * rng.standard_normal((NUM_CLASSES, k)) + shared * common  # [C, K], unit-normal entries
        return (strength * unit).astype(np.float32)

    def space(dim: int, bias_mean: float, non_negative: bool) -> _Space:
        # Unit-variance latent directions map to unit-variance channels; biases spread the channels' offsets.
        weight = rng.standard_normal((k, dim)) / np.sqrt(k)  # [K, D]
        bias = bias_mean + 0.5 * rng.standard_normal(dim)  # [D]
        return _Space(weight.astype(np.float32), bias.astype(np.float32), non_negative)

    return _Model(
        audio_prototypes=prototypes(config.audio_strength),
        visual_prototypes=prototypes(config.visual_strength),
        vggish=space(128, 0.0, non_negative=False),
        res152=space(2048, -config.visual_threshold, non_negative=True),
        r2plus1d=space(512, -config.visual_threshold, non_negative=True),
    )


# Where each of a second's 8 ResNet frames sits between that second's drift anchor and the next one.
_FRAME_WEIGHTS = ((np.arange(FRAMES_PER_SEGMENT) + 0.5) / FRAMES_PER_SEGMENT).astype(np.float32)[None, :, None]


def _signal(activity: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """activity [T, C] @ prototypes [C, K] over the active classes only: tiny products stay single-threaded,
    so worker threads do not fight over BLAS threads (a 3-5x slowdown on a busy 2-core machine)."""
    active = np.flatnonzero(activity.any(0))
    return activity[:, active] @ prototypes[active]  # [T, K]


def _activity(mask: np.ndarray, amplitude: np.ndarray, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Class evidence [T, C] of one modality: the event's amplitude in its segments and `temporal_context` times it
    in the video's other segments (a present object or sound source is partly there before and after its event).
    Inside an event, each segment falls back to the context level with probability `intermittency` (a dog that
    barks now and then, speech with pauses: the annotation spans the event, the evidence comes and goes)."""
    present = mask.any(0)  # [C]
    gaps = rng.random(mask.shape) < config.intermittency  # [T, C]
    full = mask & ~gaps
    return amplitude * np.where(full, np.float32(1.0), np.float32(config.temporal_context) * present)


def _map(latent: np.ndarray, space: _Space, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Latent [..., K] -> features [..., D] through a feature space, with independent feature noise."""
    out = latent @ space.weight  # [..., D]
    out += space.bias
    out += np.float32(config.feature_noise) * rng.standard_normal(out.shape, dtype=np.float32)
    if space.non_negative:
        np.maximum(out, np.float32(0.0), out=out)
    return out


def _video_features(
    audio_mask: np.ndarray, visual_mask: np.ndarray, rng: np.random.Generator, model: _Model, config: SynthConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of one video from its masks [10, 25]: vggish [10, 128], res152 [80, 2048], r2plus1d [10, 512].

    Per modality, a segment's latent is noise + sum over classes (evidence @ prototypes) + the video's scene
    vector; evidence leaks into the other modality at `cross_modal_leakage`. The visual latent is shared by
    ResNet-152 (8 frames per second, each with its own noise and a smooth drift) and R(2+1)D (its own noise).
    """
    f32 = np.float32
    k = config.latent_dim
    audio_amp = rng.uniform(config.amplitude_min, 1.0, NUM_CLASSES).astype(f32)  # [C], loudness per event
    visual_amp = rng.uniform(config.amplitude_min, 1.0, NUM_CLASSES).astype(f32)  # [C], prominence per event
    audio_act = _activity(audio_mask, audio_amp, rng, config)  # [T, C]
    visual_act = _activity(visual_mask, visual_amp, rng, config)  # [T, C]
    leak = f32(config.cross_modal_leakage)
    audio_signal = _signal(audio_act + leak * visual_act, model.audio_prototypes)  # [T, K]
    visual_signal = _signal(visual_act + leak * audio_act, model.visual_prototypes)  # [T, K]
    audio_scene = f32(config.scene) * rng.standard_normal(k, dtype=f32)  # [K]
    visual_scene = f32(config.scene) * rng.standard_normal(k, dtype=f32)  # [K]
    noise = f32(config.noise)

    audio_latent = audio_signal + audio_scene + noise * rng.standard_normal((NUM_SEGMENTS, k), dtype=f32)
    visual_base = visual_signal + visual_scene  # [T, K]
    frames = visual_base[:, None, :] + noise * rng.standard_normal((NUM_SEGMENTS, FRAMES_PER_SEGMENT, k), dtype=f32)
    anchors = f32(config.frame_drift) * rng.standard_normal((NUM_SEGMENTS + 1, 1, k), dtype=f32)  # [T + 1, 1, K]
    frames += (1 - _FRAME_WEIGHTS) * anchors[:-1] + _FRAME_WEIGHTS * anchors[1:]  # [T, 8, K]
    motion_latent = visual_base + noise * rng.standard_normal((NUM_SEGMENTS, k), dtype=f32)

    audio = _map(audio_latent, model.vggish, rng, config)  # [10, 128]
    res152 = _map(frames.reshape(NUM_SEGMENTS * FRAMES_PER_SEGMENT, k), model.res152, rng, config)  # [80, 2048]
    r2plus1d = _map(motion_latent, model.r2plus1d, rng, config)  # [10, 512]
    return audio, res152, r2plus1d


def video_features(
    labels: SynthLabels, index: int, split: str, config: SynthConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features `generate` writes for video `index` of `split` (vggish, res152, r2plus1d_18), in memory."""
    return _video_features(
        labels.audio[index],
        labels.visual[index],
        np.random.default_rng(_seed_sequence(config.seed, split, index, _FEATURE_STREAM)),
        _make_model(config),
        config,
    )


# ------------------------------------------------------------------------------------------------ files


def _write_text(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_csvs(root: Path, splits: dict[str, SynthLabels]) -> None:
    """The LLP CSVs: weak lists per split and the full list; dense eval rows for val and test only."""
    weak_rows: dict[str, list[str]] = {}
    for split, labels in splits.items():
        weak_rows[split] = [
            f"{name}\t{','.join(CLASSES[c] for c in order)}"
            for name, order in zip(labels.filenames, labels.class_order)
        ]
        _write_text(root / WEAK_FILES[split], ["filename\tevent_labels", *weak_rows[split]])
    _write_text(root / FULL_FILE, ["filename\tevent_labels", *(row for split in SPLITS for row in weak_rows[split])])
    for modality, file_name in EVAL_FILES.items():
        rows = ["filename\tonset\toffset\tevent_labels"]
        for split in ("val", "test"):
            labels = splits[split]
            masks = labels.audio if modality == "audio" else labels.visual  # [N, T, C]
            for index, (name, order) in enumerate(zip(labels.filenames, labels.class_order)):
                for c in order:
                    rows += [f"{name}\t{on}\t{off}\t{CLASSES[c]}" for on, off in _runs(masks[index, :, c])]
        _write_text(root / file_name, rows)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write a feature file, on disk when this returns (the dataset is swapped into place once every file is)."""
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def _default_workers() -> int:
    """Two threads per core (writing overlaps computing), at most 8."""
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def _check_target(out_dir: Path, overwrite: bool, shown: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise AvvpError(f"{shown} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise AvvpError(f"{shown} is not empty: choose an empty or new folder, or pass --overwrite to replace it")


_SWAP_LOCK_WAIT = 30.0  # seconds to wait for another `avvp synth` moving a dataset into the same folder


def generate(
    out_dir: str | os.PathLike,
    config: SynthConfig = SynthConfig(),
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write LLP-Synth in the LLP layout: OUT/feats/{vggish,res152,r2plus1d_18}/<id>.npy and OUT/AVVP_*.csv.

    Everything is written into a temporary folder beside `out_dir` and moved into place at the end, so an
    interrupted run (or a failed one) leaves no partial dataset and `overwrite` never mixes old and new files.
    `out_dir` is checked again at that move, under a lock: of two runs into one new folder, the later fails
    (without `overwrite`) instead of replacing the other's dataset. The staging folders of killed runs are
    removed on start. A symlink `out_dir` is written through to its target.

    Args:
        out_dir: the dataset folder; must be absent or empty unless `overwrite`.
        config: sizes, seed and knobs.
        overwrite: replace a non-empty `out_dir`.
        progress: show a tqdm progress bar.
        workers: threads computing and writing features (default: 2 per core, at most 8); the output does not
            depend on it.

    Returns:
        A summary: folder, sizes, seed, bytes written, seconds, and the label statistics of every split.
    """
    from avvp.utils import output_path, progress_bar, remove_stale_temporaries, temporary_folder, write_error

    started = time.perf_counter()
    shown = Path(out_dir)
    out_dir = output_path(shown, folder=True)
    _check_target(out_dir, overwrite, shown)
    workers = workers or _default_workers()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir.parent)
        staging = temporary_folder(out_dir, "staging")
    except OSError as err:
        raise write_error(shown, err) from None
    try:
        splits = _all_labels(config)
        _write_csvs(staging, splits)
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        for folder in FEATURE_SHAPES:
            (staging / "feats" / folder).mkdir(parents=True)
        model = _make_model(config)
        jobs = [(split, index) for split in SPLITS for index in range(len(splits[split].filenames))]

        def write_video(job: tuple[str, int]) -> int:
            split, index = job
            labels = splits[split]
            rng = np.random.default_rng(_seed_sequence(config.seed, split, index, _FEATURE_STREAM))
            arrays = _video_features(labels.audio[index], labels.visual[index], rng, model, config)
            vid = video_id(labels.filenames[index])
            for folder, array in zip(FEATURE_SHAPES, arrays):
                _save_npy(staging / "feats" / folder / f"{vid}.npy", array)
            return sum(array.nbytes for array in arrays)

        feature_bytes = 0
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            progress_bar(progress=progress, total=len(jobs), desc="LLP-Synth", unit="video") as bar,
        ):
            for written in pool.map(write_video, jobs):  # on an error, map cancels the videos not started
                feature_bytes += written
                bar.update(1)
        _sync_tree(staging)
        _swap_into_place(staging, out_dir, overwrite, shown)
    except OSError as err:  # nothing is read here: every OSError is a failed write (full disk, permission)
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(shown, err) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "out": str(shown),
        "videos": config.sizes(),
        "seed": config.seed,
        "feature_bytes": feature_bytes,
        "seconds": time.perf_counter() - started,
        "label_statistics": {split: label_statistics(labels) for split, labels in splits.items()},
    }


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (the feature files are synced as they are written; this catches
    the CSVs and the folders' entries): the dataset is on disk before it is swapped into place."""
    from avvp.utils import sync_file, sync_folder

    for folder, _, files in os.walk(root):
        for name in files:
            sync_file(os.path.join(folder, name))
        sync_folder(folder)


def _swap_into_place(staging: Path, out_dir: Path, overwrite: bool, shown: Path) -> None:
    """Move the finished staging folder to `out_dir`, replacing what was there only once all is written.

    Under a lock beside `out_dir`, so that two runs never interleave their moves; `out_dir` is checked again
    there, since another run may have filled it while this one was generating."""
    from avvp.faults import fault_point
    from avvp.utils import PidLock, sync_folder, temporary_folder

    filled = AvvpError(
        f"{shown} was filled by another process while this one was generating: nothing written (choose another "
        "folder, or pass --overwrite to replace it)"
    )
    lock = PidLock(
        out_dir.parent / f".{out_dir.name}.synth.lock", "another `avvp synth`", subject=shown, wait=_SWAP_LOCK_WAIT
    )
    retired = None
    with lock:
        if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
            raise AvvpError(f"{shown} was created by another process while this one was generating: nothing written")
        if out_dir.is_dir() and any(out_dir.iterdir()):
            if not overwrite:
                raise filled
            retired = temporary_folder(out_dir, "old")
            os.replace(out_dir, retired / "data")
            fault_point(f"{out_dir.name} (the previous dataset set aside)")
        try:
            os.replace(staging, out_dir)  # onto an absent or empty folder: fails if another process fills it now
        except BaseException as err:  # an OSError, or an interrupt (Ctrl-C, SIGTERM): the previous data go back
            if retired is not None:
                try:
                    os.replace(retired / "data", out_dir)
                except OSError:  # keep the previous dataset under a name no clean-up removes
                    kept = out_dir.parent / f"{out_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
                    os.replace(retired / "data", kept)
                    reason = getattr(err, "strerror", None) or type(err).__name__
                    raise AvvpError(
                        f"cannot move the new dataset into {shown} ({reason}); its previous content is now {kept}"
                    ) from None
                shutil.rmtree(retired, ignore_errors=True)
            if isinstance(err, OSError) and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise filled from None
            raise
        sync_folder(out_dir.parent)  # the swap on disk before the dataset is reported written
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)  # outside the lock: deleting a large dataset takes a while


def _read_config_file(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in a folder's synth.json, or None where there is none."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise AvvpError(f"{path}: not a LLP-Synth config ({err})") from err
    if not isinstance(values, dict):
        raise AvvpError(f"{path}: not a LLP-Synth config (not a JSON object)")
    return values


def folder_version(out_dir: str | os.PathLike) -> int | None:
    """The LLP-Synth generator version a folder was written by (its synth.json; 1 before versions were recorded),
    or None for a folder without synth.json."""
    values = _read_config_file(out_dir)
    return None if values is None else int(values.get("version", 1))


def load_config(out_dir: str | os.PathLike) -> SynthConfig | None:
    """The SynthConfig a folder was generated with (its synth.json), or None for another folder or a folder of
    another generator version (whose features this version would not reproduce: a cache of it is stale)."""
    values = _read_config_file(out_dir)
    if values is None or values.get("version", 1) != GENERATOR_VERSION:
        return None
    try:
        return SynthConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        raise AvvpError(f"{Path(out_dir) / CONFIG_FILE}: not a LLP-Synth config ({err})") from err


def training_truth(annotations_dir: str | os.PathLike, filenames: Sequence[str], labels: np.ndarray):
    """The dense audio and visual truth of training videos of a LLP-Synth folder, regenerated from its seed (the
    training split's truth is not written to disk); `filenames` and their weak `labels` [N, 25] must be those the
    folder's AVVP_train.csv lists.

    Returns:
        (audio, visual), bool [N, 10, 25] each, in the order of `filenames`; None for a folder that is not
        LLP-Synth of this generator version, or whose training videos are not the ones its seed makes (edited).
    """
    config = load_config(annotations_dir)
    if config is None:
        return None
    truth = sample_labels(config.train, config.seed, "train")
    row_of = {name: row for row, name in enumerate(truth.filenames)}
    rows = [row_of.get(name) for name in filenames]
    if None in rows or not np.array_equal(truth.labels[rows], np.asarray(labels, dtype=bool)):
        return None
    return truth.audio[rows], truth.visual[rows]
