"""The official LLP metrics: hand-computed cases and a comparison with a plain per-video implementation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference_metrics import reference_evaluate, reference_runs

from avvp.data.classes import NUM_CLASSES, NUM_SEGMENTS
from avvp.metrics import (
    COUNTED_TRACKS,
    TRACKS,
    evaluate,
    extract_events,
    format_scores,
    parse_predictions,
    scores_json,
)

SPEECH, DOG = 0, 3


def empty(videos: int = 1) -> np.ndarray:
    return np.zeros((videos, NUM_SEGMENTS, NUM_CLASSES), dtype=bool)


def with_segments(segments: list[int], class_index: int = SPEECH) -> np.ndarray:
    """One video with `class_index` positive in `segments`."""
    array = empty()
    array[0, segments, class_index] = True
    return array


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases.


def test_no_events_anywhere_scores_100_everywhere():
    scores = evaluate(empty(3), empty(3), empty(3), empty(3))
    for level in (scores.segment, scores.event):
        assert level == {track: 100.0 for track in TRACKS}
    assert np.all(scores.segment_counts["audio"].video_f == 1.0)


def test_missing_every_event_scores_0():
    truth = with_segments([2, 3, 4])
    scores = evaluate(empty(), empty(), truth, truth)
    assert scores.segment["audio"] == 0.0
    assert scores.event["audio"] == 0.0
    assert scores.segment_counts["audio"].fn[0, SPEECH] == 3
    assert scores.event_counts["audio"].fn[0, SPEECH] == 1


def test_all_segments_positive():
    everything = np.ones((1, NUM_SEGMENTS, NUM_CLASSES), dtype=bool)
    scores = evaluate(everything, everything, everything, everything)
    assert scores.segment == {track: 100.0 for track in TRACKS}
    assert scores.event == {track: 100.0 for track in TRACKS}
    assert np.all(scores.event_counts["audio"].tp == 1)  # one event covering all 10 segments per class


def test_full_prediction_against_half_ground_truth_has_iou_exactly_one_half():
    pred = with_segments(list(range(10)))
    truth = with_segments([0, 1, 2, 3, 4])
    scores = evaluate(pred, empty(), truth, empty())
    # Segment level: TP 5, FP 5, FN 0 -> F = 10 / 15.
    assert scores.segment["audio"] == pytest.approx(100 * 10 / 15)
    # Event level: IoU 5 / 10 = 0.5 counts as a match.
    assert scores.event["audio"] == 100.0
    assert scores.event_counts["audio"].tp[0, SPEECH] == 1


def test_iou_just_below_one_half_is_a_miss():
    pred = with_segments([0, 1, 2])  # [0, 3) against [0, 1): IoU 1/3
    truth = with_segments([0])
    scores = evaluate(pred, empty(), truth, empty())
    counts = scores.event_counts["audio"]
    assert (counts.tp[0, SPEECH], counts.fp[0, SPEECH], counts.fn[0, SPEECH]) == (0, 1, 1)
    assert scores.event["audio"] == 0.0


def test_runs_touching_segments_0_and_9():
    pred = with_segments([0, 1, 8, 9])
    truth = with_segments([0, 1, 2, 9])
    video, class_index, start, end = extract_events(pred)
    assert list(zip(start, end)) == [(0, 2), (8, 10)]
    assert set(video) == {0} and set(class_index) == {SPEECH}
    scores = evaluate(pred, empty(), truth, empty())
    # Segment: TP {0,1,9}, FP {8}, FN {2} -> 6 / 8.
    assert scores.segment["audio"] == pytest.approx(75.0)
    # Events: [0,2) vs [0,3) IoU 2/3 and [8,10) vs [9,10) IoU 1/2: both matched.
    assert scores.event["audio"] == 100.0


def test_several_runs_of_one_class():
    truth = with_segments([0, 1, 4, 5, 8, 9])  # events [0,2) [4,6) [8,10)
    pred = with_segments([0, 3, 4, 5, 6, 7])  # events [0,1) [3,8)
    scores = evaluate(pred, empty(), truth, empty())
    counts = scores.event_counts["audio"]
    # [0,1) matches [0,2) (IoU 1/2); [3,8) has IoU 2/5 with [4,6): FP; [4,6) and [8,10) unmatched: FN.
    assert (counts.tp[0, SPEECH], counts.fp[0, SPEECH], counts.fn[0, SPEECH]) == (1, 1, 2)
    assert scores.event["audio"] == pytest.approx(100 * 2 / 5)
    # Segment: TP {0,4,5}, FP {3,6,7}, FN {1,8,9}.
    assert scores.segment["audio"] == pytest.approx(50.0)


def test_video_f_averages_only_classes_with_prediction_or_ground_truth():
    pred = with_segments([0, 1]) | with_segments([5], class_index=DOG)
    truth = with_segments([0, 1])
    scores = evaluate(pred, empty(), truth, empty())
    # Speech F = 1, Dog F = 0 (prediction only); the other 23 classes do not count.
    assert scores.segment["audio"] == pytest.approx(50.0)
    assert scores.segment_counts["audio"].video_f[0] == pytest.approx(0.5)


def test_audio_visual_and_pooled_event_tracks():
    truth_audio = with_segments(list(range(10)))
    truth_visual = with_segments([0, 1, 2, 3, 4])
    scores = evaluate(truth_audio, empty(), truth_audio, truth_visual)
    assert scores.segment["audio"] == 100.0
    assert scores.segment["visual"] == 0.0
    assert scores.segment["audio_visual"] == 0.0  # nothing predicted visible, so nothing audio-visual
    # Pooled: TP 10 + 0, FP 0, FN 0 + 5 -> 20 / 25.
    assert scores.segment["event"] == pytest.approx(80.0)
    assert scores.segment["type"] == pytest.approx(100 / 3)


def test_dataset_score_is_the_mean_over_videos():
    pred = np.concatenate([with_segments([1]), empty()])
    truth = np.concatenate([with_segments([1]), with_segments([1])])
    scores = evaluate(pred, pred, truth, truth)
    assert scores.segment["audio"] == pytest.approx(50.0)
    np.testing.assert_array_equal(scores.segment_counts["audio"].video_f, [1.0, 0.0])


def test_parse_applies_threshold_and_video_level_filter():
    audio = np.full((1, NUM_SEGMENTS, NUM_CLASSES), 0.9, dtype=np.float32)
    visual = np.full((1, NUM_SEGMENTS, NUM_CLASSES), 0.5, dtype=np.float32)  # exactly the threshold: positive
    audio[0, 3, SPEECH] = 0.49
    video = np.full((1, NUM_CLASSES), 0.5, dtype=np.float32)
    video[0, DOG] = 0.4999
    pred_audio, pred_visual = parse_predictions(audio, visual, video)
    assert pred_audio.dtype == bool and pred_audio.shape == (1, NUM_SEGMENTS, NUM_CLASSES)
    assert not pred_audio[0, 3, SPEECH] and pred_audio[0, 4, SPEECH]
    assert not pred_audio[0, :, DOG].any() and not pred_visual[0, :, DOG].any()  # filtered by the video level
    assert pred_visual[0, :, SPEECH].all()
    unfiltered_audio, _ = parse_predictions(audio, visual)
    assert unfiltered_audio[0, :, DOG].all()


def test_class_recall_sums_over_videos():
    truth = np.concatenate([with_segments([0, 1]), with_segments([0, 1])])
    pred = np.concatenate([with_segments([0, 1]), empty()])
    recall = evaluate(pred, pred, truth, truth).segment_counts["audio"].class_recall()
    assert recall[SPEECH] == pytest.approx(50.0)
    assert np.isnan(recall[DOG])


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="evaluate expects"):
        evaluate(empty(2), empty(2), empty(3), empty(3))


def test_format_and_json():
    truth = with_segments([0, 1, 2])
    scores = evaluate(with_segments([0, 1]), truth, truth, truth)
    table = format_scores(scores)
    lines = table.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["Audio", "Visual", "Audio-Visual", "Type@AV", "Event@AV"]
    assert lines[1].startswith("Segment-level") and lines[2].startswith("Event-level")
    assert lines[1].split()[1:] == [f"{scores.segment[t]:.1f}" for t in TRACKS]
    assert lines[2].split()[1:] == [f"{scores.event[t]:.1f}" for t in TRACKS]
    data = json.loads(scores_json(scores))
    assert data == {"segment": scores.segment, "event": scores.event}
    assert list(data["segment"]) == list(TRACKS)


# ---------------------------------------------------------------------------------------------------------------
# Property tests: the vectorised metric equals the plain per-video one, exactly.

videos = st.integers(min_value=1, max_value=5)


def segment_arrays(count: int):
    return arrays(np.bool_, (count, NUM_SEGMENTS, NUM_CLASSES))


@st.composite
def four_arrays(draw):
    count = draw(videos)
    return tuple(draw(segment_arrays(count)) for _ in range(4))


@st.composite
def sparse_four_arrays(draw):
    """Realistic density: a few classes per video, runs of several segments."""
    count = draw(videos)
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(4):
        array = empty(count)
        for n in range(count):
            for c in rng.choice(NUM_CLASSES, size=rng.integers(0, 4), replace=False):
                for _ in range(rng.integers(1, 3)):
                    start = rng.integers(0, NUM_SEGMENTS)
                    array[n, start : start + rng.integers(1, 8), c] = True
        result.append(array)
    return tuple(result)


def assert_matches_reference(pred_a, pred_v, gt_a, gt_v):
    scores = evaluate(pred_a, pred_v, gt_a, gt_v)
    reference = reference_evaluate(pred_a, pred_v, gt_a, gt_v)
    for level, counts in (("segment", scores.segment_counts), ("event", scores.event_counts)):
        assert getattr(scores, level) == reference[level]["scores"]  # bit-exact, as the official code sums
        for track in COUNTED_TRACKS:
            np.testing.assert_array_equal(counts[track].video_f, reference[level]["per_video"][track])
            tp, fp, fn = zip(*reference[level]["counts"][track])
            np.testing.assert_array_equal(counts[track].tp, np.array(tp))
            np.testing.assert_array_equal(counts[track].fp, np.array(fp))
            np.testing.assert_array_equal(counts[track].fn, np.array(fn))


@settings(max_examples=60, deadline=None)
@given(four_arrays())
def test_matches_per_video_reference_on_arbitrary_arrays(data):
    assert_matches_reference(*data)


@settings(max_examples=60, deadline=None)
@given(sparse_four_arrays())
def test_matches_per_video_reference_on_sparse_runs(data):
    assert_matches_reference(*data)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, (4, NUM_SEGMENTS, NUM_CLASSES)))
def test_extract_events_matches_reference_runs(segments):
    video, class_index, start, end = extract_events(segments)
    found = sorted(zip(video.tolist(), class_index.tolist(), start.tolist(), end.tolist()))
    expected = sorted(
        (n, c, s, e)
        for n in range(len(segments))
        for c in range(NUM_CLASSES)
        for s, e in reference_runs(segments[n, :, c])
    )
    assert found == expected


@settings(max_examples=30, deadline=None)
@given(four_arrays())
def test_perfect_prediction_scores_100(data):
    _, _, gt_a, gt_v = data
    scores = evaluate(gt_a, gt_v, gt_a, gt_v)
    assert scores.segment == {track: 100.0 for track in TRACKS}
    assert scores.event == {track: 100.0 for track in TRACKS}
