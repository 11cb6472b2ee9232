"""LLP-Synth: the written layout, label statistics against real LLP, determinism and the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from avvp.cli import main
from avvp.data import synth
from avvp.data.annotations import load_split, read_weak_labels
from avvp.data.classes import CLASSES
from avvp.data.features import FeatureFolder
from avvp.data.synth import (
    SynthConfig,
    broadcast_oracle,
    generate,
    label_statistics,
    load_config,
    sample_labels,
    video_features,
)
from avvp.errors import AvvpError
from avvp.metrics import evaluate

SMALL = SynthConfig(train=120, val=60, test=120, seed=7)
FILENAME = re.compile(r"[A-Za-z0-9_-]{11}_\d+_\d+")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A generated LLP-Synth of 300 videos, shared by the layout tests."""
    out = tmp_path_factory.mktemp("synth") / "llp_synth"
    summary = generate(out, SMALL, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def many_labels():
    """Labels of 5,000 test videos (no features): enough for tight statistics."""
    return sample_labels(5000, seed=0, split="test")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------- layout


def test_layout_is_read_by_the_annotation_loaders(small_set):
    out, summary = small_set
    assert summary["videos"] == {"train": 120, "val": 60, "test": 120}
    for name, header in [
        ("AVVP_train.csv", "filename\tevent_labels"),
        ("AVVP_val_pd.csv", "filename\tevent_labels"),
        ("AVVP_test_pd.csv", "filename\tevent_labels"),
        ("AVVP_dataset_full.csv", "filename\tevent_labels"),
        ("AVVP_eval_audio.csv", "filename\tonset\toffset\tevent_labels"),
        ("AVVP_eval_visual.csv", "filename\tonset\toffset\tevent_labels"),
    ]:
        assert (out / name).read_text().split("\n", 1)[0] == header
    splits = {name: load_split(out, name) for name in ("train", "val", "test")}
    assert [len(s.filenames) for s in splits.values()] == [120, 60, 120]
    assert splits["train"].audio is None
    full = read_weak_labels(out / "AVVP_dataset_full.csv")
    assert full.filenames == [f for s in splits.values() for f in s.filenames]
    for split in ("val", "test"):
        loaded = splits[split]
        # The weak labels are exactly the union of the dense audio and visual events, and match sample_labels.
        union = loaded.audio.any(1) | loaded.visual.any(1)
        np.testing.assert_array_equal(loaded.labels.astype(bool), union)
        sampled = sample_labels(len(loaded.filenames), seed=SMALL.seed, split=split)
        assert sampled.filenames == loaded.filenames
        np.testing.assert_array_equal(sampled.audio, loaded.audio)
        np.testing.assert_array_equal(sampled.visual, loaded.visual)


def test_video_ids_are_unique_and_llp_shaped(small_set):
    out, _ = small_set
    filenames = read_weak_labels(out / "AVVP_dataset_full.csv").filenames
    assert all(FILENAME.fullmatch(name) for name in filenames)
    ids = [name[:11] for name in filenames]
    assert len(set(ids)) == len(ids)
    for folder in ("vggish", "res152", "r2plus1d_18"):
        assert sorted(p.stem for p in (out / "feats" / folder).iterdir()) == sorted(ids)


def test_eval_rows_are_single_class_runs(small_set):
    out, _ = small_set
    rows = (out / "AVVP_eval_audio.csv").read_text().splitlines()[1:]
    eval_videos = set(read_weak_labels(out / "AVVP_val_pd.csv").filenames) | set(
        read_weak_labels(out / "AVVP_test_pd.csv").filenames
    )
    seen: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for row in rows:
        name, onset, offset, label = row.split("\t")
        assert name in eval_videos  # dense labels for val and test only
        assert label in CLASSES
        assert 0 <= int(onset) < int(offset) <= 10
        seen.setdefault((name, label), []).append((int(onset), int(offset)))
    for runs in seen.values():  # runs of one class are separate (a gap between them), not touching
        runs.sort()
        assert all(end < start for (_, end), (start, _) in itertools.pairwise(runs))


def test_features_shapes_dtypes_and_ranges(small_set):
    out, _ = small_set
    ids = [name[:11] for name in read_weak_labels(out / "AVVP_test_pd.csv").filenames[:40]]
    features = FeatureFolder(out / "feats").load(ids)  # validates shape, dtype and finiteness per file
    assert features.audio.shape == (40, 10, 128) and features.audio.dtype == np.float32
    assert features.res152.shape == (40, 80, 2048) and features.res152.dtype == np.float32
    assert features.r2plus1d.shape == (40, 10, 512) and features.r2plus1d.dtype == np.float32
    for array in (features.audio, features.res152, features.r2plus1d):
        assert np.isfinite(array).all()
    assert features.res152.min() >= 0 and features.r2plus1d.min() >= 0  # like pooled CNN activations
    assert 0.3 < features.res152.mean() < 0.6
    assert 0.2 < (features.res152 == 0).mean() < 0.8  # sparse-ish
    # The 8 frames of a second differ from each other (drift and per-frame noise).
    frames = features.res152.reshape(40, 10, 8, 2048)
    assert (np.abs(np.diff(frames, axis=2)).mean(-1) > 0.1).all()


def test_features_carry_the_class_prototypes(small_set):
    """An audible event moves its segments' audio latent along its class prototype, which the fixed random layer
    maps into VGGish space: the mean difference between segments where Speech is heard and where it is not points
    along the mapped Speech prototype (the signal to learn)."""
    out, _ = small_set
    labels = sample_labels(120, seed=SMALL.seed, split="test")
    audio = np.stack([video_features(labels, i, "test", SMALL)[0] for i in range(120)])  # [N, 10, 128]
    ids = [name[:11] for name in labels.filenames]
    np.testing.assert_array_equal(audio, FeatureFolder(out / "feats").load(ids).audio)
    speech = labels.audio[:, :, CLASSES.index("Speech")]  # [N, 10]
    difference = audio[speech].mean(0) - audio[~speech].mean(0)  # [128]
    model = synth._make_model(SMALL)
    direction = model.audio_prototypes[CLASSES.index("Speech")] @ model.vggish.weight  # [128]
    cosine = difference @ direction / (np.linalg.norm(difference) * np.linalg.norm(direction))
    assert cosine > 0.7  # random directions in 128-d: |cosine| ~ 0.09


def test_event_evidence_is_intermittent_with_context_around_it():
    """Inside an event a segment carries the full amplitude with probability 1 - intermittency, else the context
    level; outside, a present class shows at the context level, an absent one not at all."""
    config = dataclasses.replace(SynthConfig(), intermittency=0.6, temporal_context=0.3)
    mask = np.zeros((10, 25), dtype=bool)
    mask[:6, 0] = True  # class 0: an event in segments 0-5; classes 1-24 absent
    amplitude = np.full(25, 0.8, dtype=np.float32)
    rng = np.random.default_rng(0)
    activity = np.stack([synth._activity(mask, amplitude, rng, config) for _ in range(2000)])  # [2000, 10, 25]
    inside = activity[:, :6, 0]
    full = np.isclose(inside, 0.8)
    assert np.all(full | np.isclose(inside, 0.24))
    assert full.mean() == pytest.approx(0.4, abs=0.02)
    np.testing.assert_allclose(activity[:, 6:, 0], 0.24, rtol=1e-6)
    assert not activity[:, :, 1:].any()


def test_features_have_a_low_dimensional_structure(small_set):
    """Like features of a pretrained network, the segment features have a low intrinsic dimension: the top
    `latent_dim` principal components of the (linearly mapped) VGGish features hold almost all their variance."""
    out, _ = small_set
    ids = [name[:11] for name in read_weak_labels(out / "AVVP_test_pd.csv").filenames]
    audio = FeatureFolder(out / "feats").load(ids).audio.reshape(-1, 128)  # [N * 10, 128]
    spectrum = np.linalg.svd(audio - audio.mean(0), compute_uv=False) ** 2
    top = spectrum[: SMALL.latent_dim].sum() / spectrum.sum()
    assert top > 0.95  # 64 of 128 directions; feature noise (std 0.1) is the rest
    assert spectrum[: SMALL.latent_dim // 2].sum() / spectrum.sum() < top - 0.05  # not lower-dimensional still


def test_a_stale_folder_of_another_generator_version_is_not_reused(tmp_path):
    """synth.json records the generator version; a folder of v1 (no version field) gives no config."""
    config = SynthConfig(train=3, val=2, test=2, seed=0)
    generate(tmp_path / "data", config, progress=False)
    recorded = json.loads((tmp_path / "data" / "synth.json").read_text())
    assert recorded["version"] == synth.GENERATOR_VERSION == 2
    assert synth.folder_version(tmp_path / "data") == 2
    old = {key: value for key, value in recorded.items() if key in ("train", "val", "test", "seed")}
    old.update(audio_strength=0.5, res152_strength=0.24)  # what v1 wrote: no version, its own knobs
    (tmp_path / "data" / "synth.json").write_text(json.dumps(old))
    assert synth.folder_version(tmp_path / "data") == 1
    assert load_config(tmp_path / "data") is None
    with pytest.raises(AvvpError, match="v2 only"):
        SynthConfig(version=1)


# ---------------------------------------------------------------------------------------------- statistics


def test_label_statistics_match_llp(many_labels):
    """Targets from real LLP test; tolerances are ~3 standard errors of the difference between the
    real statistic (1,200 test videos, ~2,200 labelled pairs) and ours (5,000 videos), plus the targets'
    rounding. E.g. classes per video: sd 0.7, SE 0.02 real / 0.01 ours -> 0.07; audible-and-visible share:
    SE 0.010 / 0.005 -> 0.035; segments per audible event: sd 3.2 over ~2,100 / ~8,000 events -> 0.3."""
    stats = label_statistics(many_labels)
    assert stats["classes_per_video"] == pytest.approx(1.8, abs=0.07)
    assert stats["audible_and_visible"] == pytest.approx(0.61, abs=0.035)
    assert stats["audible_only"] == pytest.approx(0.34, abs=0.035)
    assert stats["visible_only"] == pytest.approx(0.04, abs=0.015)
    assert stats["audio_segments_per_event"] == pytest.approx(7.0, abs=0.3)
    assert stats["visual_segments_per_event"] == pytest.approx(8.2, abs=0.3)
    # Several separate runs: real test has 21 % of audible and 11 % of visible events in 2+ runs.
    assert stats["audio_multi_run_share"] == pytest.approx(0.20, abs=0.05)
    assert stats["visual_multi_run_share"] == pytest.approx(0.11, abs=0.04)
    frequency = stats["class_frequency"]
    others = sorted((f for name, f in frequency.items() if name != "Speech"), reverse=True)
    assert frequency["Speech"] > 0.45 and frequency["Speech"] > 3 * others[0]  # by far the most common
    assert min(others) > 0  # every class occurs


def test_class_frequencies_follow_llp_train(many_labels, llp_dir):
    stats = label_statistics(many_labels)
    real = read_weak_labels(llp_dir / "AVVP_train.csv").labels.mean(0)  # [25]
    ours = np.array([stats["class_frequency"][name] for name in CLASSES])
    assert np.corrcoef(real, ours)[0, 1] > 0.98


def test_label_statistics_measured_on_real_llp(llp_dir):
    """label_statistics on real LLP test gives the numbers the generator was tuned to (so the synth comparison is like for like)."""
    stats = label_statistics(load_split(llp_dir, "test"))
    assert stats["classes_per_video"] == pytest.approx(1.8, abs=0.02)
    assert stats["audible_and_visible"] == pytest.approx(0.61, abs=0.01)
    assert stats["audible_only"] == pytest.approx(0.34, abs=0.01)
    assert stats["visible_only"] == pytest.approx(0.04, abs=0.01)
    assert stats["audio_segments_per_event"] == pytest.approx(7.0, abs=0.05)
    assert stats["visual_segments_per_event"] == pytest.approx(8.2, abs=0.05)


REAL_ORACLE = {"audio": 76.1, "visual": 60.3, "audio_visual": 52.6, "type": 63.0, "event": 71.7}


def test_broadcast_oracle_on_real_llp(llp_dir):
    pred_audio, pred_visual = broadcast_oracle(load_split(llp_dir, "test"))
    split = load_split(llp_dir, "test")
    scores = evaluate(pred_audio >= 0.5, pred_visual >= 0.5, split.audio, split.visual)
    assert {k: round(v, 1) for k, v in scores.segment.items()} == REAL_ORACLE


def test_broadcast_oracle_calibration(many_labels):
    """Within 5 points of real LLP on every segment-level number (measured: within 1.1)."""
    pred_audio, pred_visual = broadcast_oracle(many_labels)
    assert pred_audio.shape == (5000, 10, 25) and pred_audio.dtype == np.float32
    scores = evaluate(pred_audio >= 0.5, pred_visual >= 0.5, many_labels.audio, many_labels.visual)
    for track, real in REAL_ORACLE.items():
        assert scores.segment[track] == pytest.approx(real, abs=5.0), track


# --------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    config = SynthConfig(train=12, val=6, test=8, seed=3)
    generate(tmp_path / "a", config, progress=False, workers=1)
    generate(tmp_path / "b", config, progress=False, workers=3)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 7 + 3 * 26  # 6 CSVs, synth.json and 3 feature files per video
    assert first == second


def test_different_seeds_differ(tmp_path):
    generate(tmp_path / "a", SynthConfig(train=5, val=5, test=5, seed=1), progress=False)
    generate(tmp_path / "b", SynthConfig(train=5, val=5, test=5, seed=2), progress=False)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first["AVVP_test_pd.csv"] != second["AVVP_test_pd.csv"]
    first_features = {p for p in first if p.startswith("feats/")}
    second_features = {p for p in second if p.startswith("feats/")}
    assert len(first_features) == len(second_features) == 45
    assert not first_features & second_features  # other video ids


def test_refuses_a_non_empty_folder_and_overwrites_cleanly(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    config = SynthConfig(train=3, val=2, test=2, seed=0)
    with pytest.raises(AvvpError, match="not empty"):
        generate(out, config, progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    generate(out, config, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists()  # no mix of old and new files
    assert load_config(out) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging folder left behind


def test_config_rejects_unknown_keys_and_bad_values():
    assert SynthConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(AvvpError, match="unknown SynthConfig key"):
        SynthConfig.from_dict({"trian": 3})
    with pytest.raises(AvvpError, match="class_similarity"):
        SynthConfig(class_similarity=1.0)
    with pytest.raises(AvvpError, match="noise"):
        dataclasses.replace(SynthConfig(), noise=-1.0)


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_and_refuses(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--train", "4", "--val", "3", "--test", "3", "--seed", "5"]
    assert main(argv) == 0
    assert "LLP-Synth (seed 5)" in capsys.readouterr().out
    assert len(read_weak_labels(out / "AVVP_test_pd.csv").filenames) == 3
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--workers", "1"]) == 0


def test_cli_sets_the_cross_modal_leakage(tmp_path, capsys):
    """--cross-modal-leakage 0: recorded in synth.json, and an audible-only event leaves no trace in the visual
    features of a video, which otherwise differ (the same seed, so the same labels and noise)."""
    argv = ["synth", "--train", "3", "--val", "1", "--test", "1", "--seed", "2"]
    assert main([*argv, "--out", str(tmp_path / "leak0"), "--cross-modal-leakage", "0"]) == 0
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    assert json.loads((tmp_path / "leak0" / "synth.json").read_text())["cross_modal_leakage"] == 0.0
    first = min((tmp_path / "leak0" / "feats" / "r2plus1d_18").glob("*.npy")).name
    leak0, default = (np.load(tmp_path / name / "feats" / "r2plus1d_18" / first) for name in ("leak0", "default"))
    assert not np.array_equal(leak0, default)
    assert main([*argv, "--out", str(tmp_path / "bad"), "--cross-modal-leakage", "-1"]) == 2
    assert "cross_modal_leakage = -1.0: must be >= 0" in capsys.readouterr().err
