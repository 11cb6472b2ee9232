"""bench/mgn_assignment.py: the Table 2 measurements count what they say (hand cases), and its probe recomputes
the assignment the model itself uses."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import mgn_assignment

sys.path.pop(0)


def test_one_class_per_segment_keeps_one_true_class() -> None:
    truth = np.zeros((1, 10, 25), dtype=bool)
    truth[0, 2, [3, 7]] = True
    truth[0, 5, 9] = True
    kept = mgn_assignment.one_class_per_segment(truth)
    assert kept.sum(axis=2).max() == 1
    assert kept[0, 2, 3] and not kept[0, 2, 7] and kept[0, 5, 9]
    assert not (kept & ~truth).any()


def test_assignment_stats_on_a_hand_case() -> None:
    """One video, weak labels {0, 1}; the model calls class 0 present; truth: class 0 in segments 0-4, none after.
    Segments 0-4 go to group 0, 5-7 to group 1, 8-9 to group 2 (each a one-hot assignment)."""
    assign = np.zeros((1, 25, 10))
    assign[0, 0, :5] = assign[0, 1, 5:8] = assign[0, 2, 8:] = 1.0
    weak = np.zeros((1, 25), dtype=bool)
    weak[0, [0, 1]] = True
    present = np.zeros((1, 25), dtype=bool)
    present[0, 0] = True
    truth = np.zeros((1, 10, 25), dtype=bool)
    truth[0, :5, 0] = True
    stats = mgn_assignment.assignment_stats(assign, present, weak, truth)
    assert stats["weak"] == pytest.approx(80.0)  # groups 0 and 1: 8 of 10
    assert stats["present"] == pytest.approx(50.0)  # group 0 only
    assert stats["truth"] == pytest.approx(100.0)  # the 5 segments with truth are in their class's group
    assert stats["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert stats["groups_per_video"] == 3 and stats["groups"] == 3
    assert stats["top"] == pytest.approx(50.0) and stats["top_class"] == "Speech"  # group 0
    uniform = np.full((1, 25, 10), 1 / 25)
    assert mgn_assignment.assignment_stats(uniform, present, weak, truth)["entropy"] == pytest.approx(np.log2(25))


def test_the_probe_recomputes_the_models_hard_assignment() -> None:
    from avvp.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("mgn", dim=32, depth_audio=1, depth_visual=1, depth_av=1, unimodal_assign="hard").eval()
    probes = {
        m: mgn_assignment.AssignmentProbe(getattr(model, f"{m}_cug").class_grouping.assign) for m in ("audio", "visual")
    }
    inputs = (torch.randn(3, 10, 128), torch.randn(3, 80, 2048), torch.randn(3, 10, 512))
    with torch.no_grad():
        output = model(*inputs)
    for modality, maps in (("audio", output.audio_maps), ("visual", output.visual_maps)):
        assign = probes[modality].result()  # [3, 25, 10], Softmax over the groups
        np.testing.assert_allclose(assign.sum(axis=1), 1.0, rtol=1e-5)
        assert np.array_equal(assign.argmax(axis=1), maps.numpy().argmax(axis=1))  # the one-hot the model used
        assert (maps.numpy().sum(axis=1) == 1).all()
