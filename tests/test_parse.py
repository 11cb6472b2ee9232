"""Windowing and event building of `avvp.parse`, on hand-made arrays (no video)."""

from __future__ import annotations

import numpy as np
import pytest

from avvp.data.classes import CLASS_INDEX, CLASSES
from avvp.parse import (
    VideoProbabilities,
    build_events,
    combine_windows,
    parse_masks,
    predict_windows,
    window_features,
    window_starts,
)


@pytest.mark.parametrize(
    ("num_seconds", "stride", "expected"),
    [
        (1, 5, [0]),
        (7, 5, [0]),
        (10, 5, [0]),
        (11, 5, [0, 1]),
        (15, 5, [0, 5]),
        (16, 5, [0, 5, 6]),
        (23, 5, [0, 5, 10, 13]),
        (23, 10, [0, 10, 13]),
        (30, 10, [0, 10, 20]),
    ],
)
def test_window_starts_cover_the_video_and_end_at_its_end(num_seconds, stride, expected):
    starts = window_starts(num_seconds, stride=stride)
    assert starts == expected
    covered = np.zeros(num_seconds, dtype=int)
    for start in starts:
        covered[start : start + 10] += 1
    assert covered.min() >= 1 and starts[-1] + 10 >= num_seconds


def _features(num_seconds: int):
    seconds = np.arange(num_seconds, dtype=np.float32)
    audio = np.repeat(seconds[:, None], 128, axis=1)  # row s holds s
    res152 = np.repeat(np.arange(8 * num_seconds, dtype=np.float32)[:, None], 2048, axis=1)  # frame f holds f
    r2plus1d = np.repeat(seconds[:, None], 512, axis=1) + 100
    return audio, res152, r2plus1d


def test_window_features_cut_the_right_seconds_and_frames():
    audio, res152, r2plus1d = _features(23)
    windows = window_features(audio, res152, r2plus1d, [0, 5, 10, 13])
    assert [w.shape for w in windows] == [(4, 10, 128), (4, 80, 2048), (4, 10, 512)]
    np.testing.assert_array_equal(windows[0][3, :, 0], np.arange(13, 23))
    np.testing.assert_array_equal(windows[1][3, :, 0], np.arange(104, 184))
    np.testing.assert_array_equal(windows[2][1, :, 0], np.arange(5, 15) + 100)


def test_short_video_is_padded_with_its_last_second():
    audio, res152, r2plus1d = _features(3)
    audio_w, res152_w, r2plus1d_w = window_features(audio, res152, r2plus1d, [0])
    np.testing.assert_array_equal(audio_w[0, :, 0], [0, 1, 2] + [2] * 7)
    np.testing.assert_array_equal(res152_w[0, :, 0], list(range(24)) + list(range(16, 24)) * 7)
    np.testing.assert_array_equal(r2plus1d_w[0, :, 0], np.array([0, 1, 2] + [2] * 7) + 100)


def test_combine_averages_overlaps_and_takes_the_max_filter():
    starts = [0, 3]  # a 13-s video: seconds 3..9 are in both windows
    segment_audio = np.stack([np.full((10, 25), 0.2), np.full((10, 25), 0.8)])
    segment_visual = np.stack([np.full((10, 25), 1.0), np.full((10, 25), 0.0)])
    video = np.stack([np.full(25, 0.3), np.full(25, 0.7)])
    probs = combine_windows(starts, 13, segment_audio, segment_visual, video, video * 0.5, video * 0.25)
    np.testing.assert_allclose(probs.audio[:, 0], [0.2] * 3 + [0.5] * 7 + [0.8] * 3, rtol=1e-6)
    np.testing.assert_allclose(probs.visual[:, 0], [1.0] * 3 + [0.5] * 7 + [0.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(probs.gate[:, 0], [0.3] * 3 + [0.7] * 10, rtol=1e-6)
    np.testing.assert_allclose(probs.p_av, 0.7, rtol=1e-6)
    np.testing.assert_allclose(probs.p_a, 0.35, rtol=1e-6)
    np.testing.assert_allclose(probs.p_v, 0.175, rtol=1e-6)


def test_padding_outputs_are_ignored():
    segment = np.zeros((1, 10, 25))
    segment[0, 4:] = 0.9  # the padded seconds 4..9 of a 4-s video
    probs = combine_windows([0], 4, segment, segment, np.ones((1, 25)), np.ones((1, 25)), np.ones((1, 25)))
    assert probs.audio.shape == (4, 25) and probs.audio.max() == 0.0
    assert build_events(probs) == []


def _probs(num_seconds: int, audio=None, visual=None, gate=None) -> VideoProbabilities:
    shape = (num_seconds, 25)
    audio = np.zeros(shape) if audio is None else audio
    visual = np.zeros(shape) if visual is None else visual
    gate = np.ones(shape) if gate is None else gate
    return VideoProbabilities(audio, visual, gate, gate.max(0), audio.max(0), visual.max(0))


def test_events_by_modality_with_hand_computed_confidence():
    dog = CLASS_INDEX["Dog"]
    audio = np.zeros((10, 25))
    visual = np.zeros((10, 25))
    gate = np.full((10, 25), 0.9)
    audio[0:3, dog] = [0.6, 0.7, 0.8]  # heard in seconds 0, 1, 2
    visual[2:5, dog] = [0.95, 0.6, 1.0]  # seen in seconds 2, 3, 4
    audio[9, CLASS_INDEX["Speech"]] = 0.5  # exactly the threshold counts, and a run may touch the end
    events = [e.to_dict() for e in build_events(_probs(10, audio, visual, gate))]
    assert events == [
        {"class": "Dog", "modality": "audio", "onset": 0, "offset": 2, "confidence": 0.65},
        {"class": "Dog", "modality": "audio-visual", "onset": 2, "offset": 3, "confidence": 0.8},
        {"class": "Dog", "modality": "visual", "onset": 3, "offset": 5, "confidence": round((0.6 + 0.9) / 2, 4)},
        {"class": "Speech", "modality": "audio", "onset": 9, "offset": 10, "confidence": 0.5},
    ]


def test_the_video_level_filter_removes_segments():
    audio = np.full((10, 25), 0.9)
    gate = np.full((10, 25), 0.49)
    gate[5:, CLASS_INDEX["Cat"]] = 0.6
    audio_mask, visual_mask = parse_masks(_probs(10, audio=audio, gate=gate))
    assert audio_mask.sum() == 5 and audio_mask[5:, CLASS_INDEX["Cat"]].all() and not visual_mask.any()
    events = build_events(_probs(10, audio=audio, gate=gate))
    assert [(e.class_name, e.modality, e.onset, e.offset) for e in events] == [("Cat", "audio", 5, 10)]


def test_whole_video_event_and_no_events():
    visual = np.ones((7, 25))
    events = build_events(_probs(7, visual=visual))
    assert len(events) == 25 and all(e.onset == 0 and e.offset == 7 and e.modality == "visual" for e in events)
    assert [e.class_name for e in events] == list(CLASSES)
    assert build_events(_probs(7)) == []


@pytest.fixture(scope="module")
def tiny_mgn():
    torch = pytest.importorskip("torch")
    from avvp.models import create_model

    torch.manual_seed(0)
    return create_model("mgn", dim=32, depth_audio=1, depth_visual=1, depth_av=1).eval()


def test_predict_windows_on_one_window_equals_the_model(tiny_mgn):
    import torch

    rng = np.random.default_rng(0)
    audio = rng.standard_normal((10, 128)).astype(np.float32)
    res152 = rng.standard_normal((80, 2048)).astype(np.float32)
    r2plus1d = rng.standard_normal((10, 512)).astype(np.float32)
    starts, probs = predict_windows(tiny_mgn, audio, res152, r2plus1d)
    with torch.inference_mode():
        direct = tiny_mgn(*(torch.from_numpy(a)[None] for a in (audio, res152, r2plus1d)))
    assert starts == [0]
    np.testing.assert_allclose(probs.audio, direct.audio[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.visual, direct.visual[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.gate, np.broadcast_to(direct.p_av[0].numpy(), (10, 25)), rtol=1e-5)


def test_predict_windows_on_a_long_video(tiny_mgn):
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((23, 128)).astype(np.float32)
    res152 = rng.standard_normal((184, 2048)).astype(np.float32)
    r2plus1d = rng.standard_normal((23, 512)).astype(np.float32)
    starts, probs = predict_windows(tiny_mgn, audio, res152, r2plus1d, stride=5, batch_size=3)
    assert starts == [0, 5, 10, 13]
    assert probs.audio.shape == probs.visual.shape == probs.gate.shape == (23, 25)
    for array in (probs.audio, probs.visual, probs.gate):
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1
    # the first 5 seconds are seen by the first window only: its outputs unchanged
    _, first = predict_windows(tiny_mgn, audio[:10], res152[:80], r2plus1d[:10])
    np.testing.assert_allclose(probs.audio[:5], first.audio[:5], rtol=1e-5, atol=1e-6)
