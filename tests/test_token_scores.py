"""Figure 2's class-token precision / recall / F1: per video, token c is found when its head's probability is at
least 0.5 and right when class c occurs in that modality's dense truth; counts pooled over the videos."""

from __future__ import annotations

import numpy as np
import pytest

from avvp.metrics import token_scores


def _truth(*classes_per_video: tuple[int, ...]) -> np.ndarray:
    """[N, 10, 25] dense truth with each listed class present in segment 3 only."""
    truth = np.zeros((len(classes_per_video), 10, 25), dtype=bool)
    for video, classes in enumerate(classes_per_video):
        truth[video, 3, list(classes)] = True
    return truth


def test_counts_are_pooled_over_videos() -> None:
    probs = np.zeros((3, 25), dtype=np.float32)
    probs[0, [1, 2]] = 0.9  # video 0: truth {1}: TP 1, FP 1
    probs[1, 5] = 0.5  # video 1: truth {5, 6}: TP 1 (0.5 counts as found), FN 1
    probs[2, 7] = 0.49  # video 2: truth {}: below the threshold, nothing
    scores = token_scores(probs, _truth((1,), (5, 6), ()))
    # TP 2, FP 1, FN 1: precision 2/3, recall 2/3, F1 4/6
    assert scores["precision"] == pytest.approx(200 / 3)
    assert scores["recall"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(200 / 3)


def test_precision_and_recall_differ() -> None:
    probs = np.zeros((2, 25), dtype=np.float32)
    probs[0, [0, 1, 2, 3]] = 1.0  # truth {0}: TP 1, FP 3
    probs[1, 4] = 0.8  # truth {4, 9}: TP 1, FN 1
    scores = token_scores(probs, _truth((0,), (4, 9)))
    assert scores["precision"] == pytest.approx(100 * 2 / 5)
    assert scores["recall"] == pytest.approx(100 * 2 / 3)
    assert scores["f1"] == pytest.approx(100 * 4 / 8)


def test_per_video_truth_and_empty_cases() -> None:
    probs = np.zeros((1, 25), dtype=np.float32)
    per_video = np.zeros((1, 25), dtype=bool)
    assert token_scores(probs, per_video) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    per_video[0, 3] = True
    probs[0, 3] = 0.7
    assert token_scores(probs, per_video) == {"precision": 100.0, "recall": 100.0, "f1": 100.0}
    with pytest.raises(ValueError, match="against ground truth"):
        token_scores(probs, np.zeros((2, 25), dtype=bool))


def test_the_record_reads_the_tokens_against_the_truth_and_the_weak_labels() -> None:
    """Video 0's weak labels {1, 2}: class 2 is audible only (in the audio truth, not the visual). Its visual
    token for class 2 is wrong against the visual truth and right against the weak labels."""
    from avvp.data.annotations import Split
    from avvp.metrics import class_token_record

    labels = np.zeros((1, 25), dtype=np.float32)
    labels[0, [1, 2]] = 1
    split = Split("val", ["v.mp4"], labels, audio=_truth((1, 2)), visual=_truth((1,)))
    probs = np.zeros((1, 25), dtype=np.float32)
    probs[0, [1, 2]] = 0.9
    tokens = class_token_record({"audio_video": probs, "visual_video": probs}, split)["tokens"]
    assert tokens["audio"]["precision"] == 100.0
    assert tokens["visual"]["precision"] == 50.0  # class 2 is not visible
    assert tokens["weak"]["audio"]["precision"] == 100.0
    assert tokens["weak"]["visual"]["precision"] == 100.0  # but it is among the weak labels
    assert tokens["weak"]["visual"]["recall"] == 100.0
