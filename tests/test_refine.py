"""Modality-aware label refinement (`avvp.refine`, `avvp refine-labels`): partners, class thresholds and decisions
on hand-computed cases, a hand-set model whose refinement is known, what the exchange does to MGN and HAN, and the
command end to end with our checkpoints and the authors'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, npz_arrays, write_official_checkpoint
from torch import nn

from avvp.checkpoint import save_checkpoint
from avvp.data.annotations import load_split
from avvp.data.classes import CLASSES, NUM_CLASSES
from avvp.data.features import Features
from avvp.data.modality_labels import read_modality_labels
from avvp.models import ParseOutput, create_model
from avvp.refine import NO_PARTNER, ExchangedScores, class_thresholds, draw_partners, exchange_scores, refine


def _labels(*rows: list[int]) -> np.ndarray:
    labels = np.zeros((len(rows), NUM_CLASSES), np.float32)
    for row, classes in enumerate(rows):
        labels[row, classes] = 1
    return labels


# ------------------------------------------------------------------------------------------------ partners


def test_partners_have_disjoint_labels_and_are_never_the_video_itself() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((300, NUM_CLASSES)) < 0.08).astype(np.float32)
    labels[np.arange(300), rng.integers(0, NUM_CLASSES, 300)] = 1
    partners = draw_partners(labels, seed=3, chunk=64)
    assert (partners != NO_PARTNER).all()
    assert (partners != np.arange(300)).all()
    assert not np.any(labels.astype(bool) & labels[partners].astype(bool))


def test_partners_are_seeded_and_uniform_among_the_disjoint_videos() -> None:
    labels = _labels([0], [1], [1], [1, 2], [2], [0, 5])  # video 0's candidates: 1, 2, 3, 4
    assert np.array_equal(draw_partners(labels, 7), draw_partners(labels, 7))
    chosen = np.array([draw_partners(labels, seed)[0] for seed in range(2000)])
    assert set(chosen) == {1, 2, 3, 4}
    counts = np.bincount(chosen, minlength=5)[1:]
    assert counts.min() > 400 and counts.max() < 600  # 500 expected each


def test_a_video_sharing_a_label_with_every_other_has_no_partner() -> None:
    labels = _labels([0, 1], [0], [1], [0, 2])
    partners = draw_partners(labels, 0)
    assert partners[0] == NO_PARTNER
    assert partners[1] == 2 and partners[2] in (1, 3)
    labels = _labels([0, 1], [0], [1], [0, 2], [])
    unlabelled = {draw_partners(labels, seed)[4] for seed in range(50)}
    assert unlabelled == {0, 1, 2, 3}  # disjoint from every video, but never its own partner


# ------------------------------------------------------------------------------------------------ thresholds, rule


def test_class_thresholds_scale_with_the_base_models_error() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.4, 0.6, 0.7], [0.7, 0.1, 0.1], [0.2, 0.3, 0.2]])
    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    err, thresholds = class_thresholds(probs, labels)
    np.testing.assert_allclose(err, [0.5, 0.0, 0.25])  # class 0 wrong on videos 1 and 2; class 2 on video 1
    np.testing.assert_allclose(thresholds, [0.5, 0.0, 0.25])  # 0.5 * err / 0.5
    err, scaled = class_thresholds(probs, labels, threshold=0.3, cut=0.65)  # 0.6 of classes 1 and 2 now "absent"
    np.testing.assert_allclose(err, [0.5, 0.25, 0.5])
    np.testing.assert_allclose(scaled, [0.3, 0.15, 0.3])  # 0.3 * err / 0.5
    _, never_wrong = class_thresholds(labels * 0.9, labels)
    assert not never_wrong.any()


def _scores(**given: np.ndarray) -> ExchangedScores:
    high = np.full((1, NUM_CLASSES), 0.9)
    fields = ["p_a", "p_v", "audio_exchanged_p_a", "audio_exchanged_p_v", "visual_exchanged_p_a"]
    return ExchangedScores(**{name: given.get(name, high) for name in [*fields, "visual_exchanged_p_v"]})


def _one(values: dict[int, float]) -> np.ndarray:
    row = np.full((1, NUM_CLASSES), 0.9)
    for column, value in values.items():
        row[0, column] = value
    return row


def test_a_label_is_removed_only_when_both_exchanged_probabilities_fall_below_its_threshold() -> None:
    weak = _labels([0, 1, 2, 3])
    thresholds = np.full(NUM_CLASSES, 0.3)
    scores = _scores(
        audio_exchanged_p_v=_one({0: 0.1, 1: 0.1, 2: 0.5}),  # class 0: both low -> not visible; 1: p_a high
        audio_exchanged_p_a=_one({0: 0.2, 2: 0.1, 5: 0.0}),  # class 5 low too, but not a weak label
        visual_exchanged_p_a=_one({3: 0.29}),
        visual_exchanged_p_v=_one({3: 0.01}),  # class 3: both low -> not audible
    )
    result = refine(weak, scores, thresholds, thresholds, np.array([True]))
    assert np.flatnonzero(result.visual[0]).tolist() == [1, 2, 3]
    assert np.flatnonzero(result.audio[0]).tolist() == [0, 1, 2]
    at_threshold = refine(weak, scores, np.full(NUM_CLASSES, 0.29), thresholds, np.array([True]))
    assert result.audio[0, 3] == 0 and at_threshold.audio[0, 3] == 1  # strictly below
    unexchanged = refine(weak, scores, thresholds, thresholds, np.array([False]))
    assert np.array_equal(unexchanged.audio, weak > 0) and np.array_equal(unexchanged.visual, weak > 0)


# ------------------------------------------------------------------------------------------------ a hand-set model


class HandModel(nn.Module):
    """p_a[c] = the largest audio feature c over time, p_v[c] = the largest r2plus1d feature c: each modality's
    probability sees its own track only, so the refinement is known from the features."""

    def forward(self, audio: torch.Tensor, res152: torch.Tensor, r2plus1d: torch.Tensor) -> ParseOutput:
        p_a = audio[:, :, :NUM_CLASSES].amax(1)
        p_v = r2plus1d[:, :, :NUM_CLASSES].amax(1)
        segments = torch.zeros(len(audio), 10, NUM_CLASSES)
        return ParseOutput(torch.maximum(p_a, p_v), p_a, p_v, segments, segments)


def test_the_hand_set_model_removes_the_labels_of_the_modality_without_evidence() -> None:
    # video 0: class 0 heard and seen; 1: class 1 heard only; 2: class 2 seen only; 3: class 3 faint in both
    heard = {0: (0, 0.9), 1: (1, 0.9), 3: (3, 0.4)}
    seen = {0: (0, 0.9), 2: (2, 0.9), 3: (3, 0.4)}
    labels = _labels([0], [1], [2], [3])
    audio, r2plus1d = np.zeros((4, 10, 128), np.float32), np.zeros((4, 10, 512), np.float32)
    for video, (column, value) in heard.items():
        audio[video, 2:5, column] = value
    for video, (column, value) in seen.items():
        r2plus1d[video, 4:9, column] = value
    features = Features(audio, np.zeros((4, 10, 2048), np.float32), r2plus1d)
    partners = draw_partners(labels, 0)
    scores = exchange_scores(HandModel(), features, partners, batch_size=3)
    np.testing.assert_allclose(scores.audio_exchanged_p_v, scores.p_v)  # the visual track is kept
    np.testing.assert_allclose(scores.visual_exchanged_p_a, scores.p_a)  # the audio track is kept
    thresholds = np.full(NUM_CLASSES, 0.5)
    result = refine(labels, scores, thresholds, thresholds, partners != NO_PARTNER)
    assert [np.flatnonzero(row).tolist() for row in result.audio] == [[0], [1], [], []]
    assert [np.flatnonzero(row).tolist() for row in result.visual] == [[0], [], [2], []]
    lower = np.full(NUM_CLASSES, 0.3)
    kept = refine(labels, scores, lower, lower, partners != NO_PARTNER)
    assert kept.audio[3, 3] and kept.visual[3, 3]  # 0.4 is not below 0.3


def _features(count: int, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    return Features(
        rng.normal(size=(count, 10, 128)).astype(np.float32),
        rng.random((count, 10, 2048)).astype(np.float32),
        rng.random((count, 10, 512)).astype(np.float32),
    )


def test_in_mgn_exchanging_the_audio_leaves_p_v_unchanged_and_in_han_it_does_not() -> None:
    """MGN's visual branch never sees the audio, so the visibility test reduces to p_v itself (and p_a); HAN's
    cross-modal attention lets the exchanged audio change p_v."""
    torch.manual_seed(0)
    features, partners = _features(6), np.array([3, 4, 5, 0, 1, 2])
    mgn = create_model("mgn", dim=32, depth_audio=1, depth_visual=1, depth_av=1)
    scores = exchange_scores(mgn, features, partners, batch_size=4)
    np.testing.assert_allclose(scores.audio_exchanged_p_v, scores.p_v, rtol=0, atol=1e-6)
    assert np.abs(scores.audio_exchanged_p_a - scores.p_a).max() > 1e-3  # p_a sees the audio, of course
    assert np.abs(scores.visual_exchanged_p_a - scores.p_a).max() > 1e-3  # and, through the CUG, the visual track
    han = create_model("han", dim=64)
    han_scores = exchange_scores(han, features, partners, batch_size=4)
    assert np.abs(han_scores.audio_exchanged_p_v - han_scores.p_v).max() > 1e-3


# ------------------------------------------------------------------------------------------------ the command


def _refine(capsys, tiny: Path, checkpoint: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "refine-labels", "--checkpoint", checkpoint, "--features", tiny / "feats",
               "--annotations", tiny, "--out", out, "--device", "cpu", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def han_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("han") / "best.safetensors"
    save_checkpoint(path, create_model("han", dim=64))
    return path


def test_refine_labels_writes_labels_evidence_and_summary(tiny_llp, tmp_path, capsys, han_checkpoint) -> None:
    status, out, err = _refine(capsys, tiny_llp, han_checkpoint, tmp_path / "labels.csv", "--threshold", "1")
    assert status == 0, err
    weak = load_split(tiny_llp, "train")
    labels = read_modality_labels(tmp_path / "labels.csv")
    assert labels.filenames == weak.filenames
    assert (labels.audio <= weak.labels).all() and (labels.visual <= weak.labels).all()
    evidence = (tmp_path / "labels.evidence.csv").read_text().splitlines()
    assert len(evidence) == 1 + int(weak.labels.sum())  # one row per weak label
    summary = json.loads((tmp_path / "labels.json").read_text())
    removed = summary["removed"]
    assert removed == {
        "audio": int((weak.labels - labels.audio).sum()),
        "visual": int((weak.labels - labels.visual).sum()),
    }
    assert summary["quality"] is None  # tiny_llp is not LLP-Synth: no training truth
    assert f"{removed['audio']:,} audio labels" in out
    for row in evidence[1:]:
        cells = dict(zip(evidence[0].split("\t"), row.split("\t")))
        line = labels.filenames.index(cells["filename"])
        column = CLASSES.index(cells["class"])
        not_visible = max(float(cells["audio_exchanged_p_v"]), float(cells["audio_exchanged_p_a"])) < float(
            cells["visual_threshold"]
        )
        assert int(cells["visible"]) == int(labels.visual[line, column]) == int(not not_visible)


def test_refine_labels_on_val_scores_the_labels_against_the_dense_truth(tiny_llp, tmp_path, capsys, han_checkpoint):
    status, out, err = _refine(capsys, tiny_llp, han_checkpoint, tmp_path / "val.csv", "--split", "val")
    assert status == 0, err
    quality = json.loads((tmp_path / "val.json").read_text())["quality"]
    assert quality["truth"] == "the dense annotations"
    # tiny_llp's dense rows name every weak label in both modalities: the weak labels are right in both
    assert quality["weak"]["visual"]["precision"] == 100.0 and quality["weak"]["audio"]["recall"] == 100.0
    assert "visual labels against the dense annotations: precision 100.0 ->" in out


def test_refine_labels_takes_the_authors_checkpoint(tiny_llp, tmp_path, capsys, official_fixture) -> None:
    checkpoint = write_official_checkpoint(npz_arrays(official_fixture), tmp_path)
    status, _, err = _refine(capsys, tiny_llp, checkpoint, tmp_path / "labels.csv")
    assert status == 0, err
    assert json.loads((tmp_path / "labels.json").read_text())["model"] == "mgn"


def test_refine_labels_refuses_bad_flags_with_one_line(tiny_llp, tmp_path, capsys, han_checkpoint) -> None:
    status, _, err = _refine(capsys, tiny_llp, han_checkpoint, tmp_path / "x.csv", "--threshold", "2")
    assert status == 2 and err.strip() == "avvp refine-labels: error: --threshold 2.0: must be in [0, 1]"
    assert not (tmp_path / "x.csv").exists()


def test_llp_synth_training_truth_is_regenerated_from_its_seed(tmp_path) -> None:
    from avvp.data.synth import SynthConfig, generate, sample_labels, training_truth

    generate(tmp_path / "synth", SynthConfig(train=6, val=2, test=2, seed=4), progress=False)
    split = load_split(tmp_path / "synth", "train")
    audio, visual = training_truth(tmp_path / "synth", split.filenames[::-1], split.labels[::-1])
    truth = sample_labels(6, 4, "train")
    assert np.array_equal(audio, truth.audio[::-1]) and np.array_equal(visual, truth.visual[::-1])
    assert np.array_equal(audio.any(1) | visual.any(1), split.labels[::-1] > 0)
    edited = split.labels.copy()
    edited[0] = 1 - edited[0]
    assert training_truth(tmp_path / "synth", split.filenames, edited) is None
    assert training_truth(tmp_path, split.filenames, split.labels) is None  # not LLP-Synth
