"""`avvp score` end to end through `main([...])`, on the real LLP test and val annotations."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from reference_metrics import reference_evaluate

from avvp.cli import main
from avvp.data.annotations import DENSE_FILES, SPLIT_FILES, load_split
from avvp.metrics import TRACKS, evaluate


@pytest.fixture(scope="module")
def test_split(llp_dir):
    return load_split(llp_dir, "test")


def save(path: Path, filenames, audio, visual, **extra) -> Path:
    np.savez(path, filenames=np.asarray(filenames), audio=audio, visual=visual, **extra)
    return path


def score(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["score", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_ground_truth_scores_100_on_every_number(tmp_path, llp_dir, test_split, capsys):
    pred = save(tmp_path / "pred.npz", test_split.filenames, test_split.audio, test_split.visual)
    status, out, _ = score(capsys, pred, "--split", "test", "--annotations", llp_dir, "--json", tmp_path / "s.json")
    assert status == 0
    assert out.splitlines()[1].split() == ["Segment-level"] + ["100.0"] * 5
    assert out.splitlines()[2].split() == ["Event-level"] + ["100.0"] * 5
    data = json.loads((tmp_path / "s.json").read_text())
    assert data == {"segment": dict.fromkeys(TRACKS, 100.0), "event": dict.fromkeys(TRACKS, 100.0)}


def test_val_ground_truth_with_probabilities_and_video_level(tmp_path, llp_dir, capsys):
    val = load_split(llp_dir, "val")
    audio = np.where(val.audio, 0.8, 0.2).astype(np.float32)
    visual = np.where(val.visual, 0.8, 0.2).astype(np.float32)
    video = (val.audio | val.visual).any(axis=1).astype(np.float32)
    pred = save(tmp_path / "pred.npz", val.filenames, audio, visual, video=video)
    status, out, _ = score(capsys, pred, "--split", "val", "--annotations", llp_dir)
    assert status == 0
    assert out.splitlines()[1].split()[1:] == ["100.0"] * 5


def test_broadcast_weak_label_oracle_on_real_test_scores_as_the_spec_metrics(tmp_path, llp_dir, test_split, capsys):
    """Weak labels repeated over all segments, both modalities, rows in any order: the printed and the JSON scores
    are those of the plain per-video metrics of spec section 5 (tests/reference_metrics.py) on the real test set."""
    broadcast = np.repeat(test_split.labels[:, None, :], 10, axis=1)  # [N, 10, 25]
    shuffle = np.random.default_rng(0).permutation(len(test_split.filenames))
    names = np.asarray(test_split.filenames)[shuffle]  # any row order is accepted
    pred = save(tmp_path / "pred.npz", names, broadcast[shuffle], broadcast[shuffle])
    status, out, _ = score(capsys, pred, "--annotations", llp_dir, "--json", tmp_path / "s.json")
    assert status == 0
    reference = reference_evaluate(broadcast > 0, broadcast > 0, test_split.audio, test_split.visual)
    order = ("audio", "visual", "audio_visual", "type", "event")  # the printed columns
    # Segment level, Audio / Visual / AV / Type@AV / Event@AV. Source: the metrics of spec section 5 on the real
    # annotations in ../shared/llp (weak labels of AVVP_test_pd.csv, ground truth of AVVP_eval_audio/visual.csv),
    # as the per-video reference implementation computes them: checked here. Not a published number.
    segment_line = ["76.1", "60.3", "52.6", "63.0", "71.7"]
    assert [f"{reference['segment']['scores'][track]:.1f}" for track in order] == segment_line
    assert out.splitlines()[1].split()[1:] == segment_line
    assert out.splitlines()[2].split()[1:] == [f"{reference['event']['scores'][track]:.1f}" for track in order]
    data = json.loads((tmp_path / "s.json").read_text())
    for level in ("segment", "event"):
        assert data[level] == pytest.approx(reference[level]["scores"], abs=1e-9)


def test_video_level_filter_applies(tmp_path, llp_dir, test_split, capsys):
    ones = np.ones((len(test_split.filenames), 10, 25), np.float32)
    video = np.zeros((len(test_split.filenames), 25), np.float32)
    video[:, 0] = 0.9  # only Speech passes the video-level filter
    pred = save(tmp_path / "pred.npz", test_split.filenames, ones, ones, video=video)
    status, _, _ = score(capsys, pred, "--annotations", llp_dir, "--json", tmp_path / "s.json")
    assert status == 0
    only_speech = np.zeros((len(test_split.filenames), 10, 25), bool)
    only_speech[:, :, 0] = True
    expected = evaluate(only_speech, only_speech, test_split.audio, test_split.visual)
    assert json.loads((tmp_path / "s.json").read_text())["segment"] == expected.segment


def test_verbose_lists_ignored_rows(tmp_path, llp_dir, test_split, capsys):
    pred = save(tmp_path / "pred.npz", test_split.filenames, test_split.audio, test_split.visual)
    status, _, err = score(capsys, pred, "--annotations", llp_dir, "--verbose")
    assert status == 0
    assert "14 rows (8 videos) name videos in no split" in err
    assert "line 3770: 8DF2PxdT5tE_390_400" in err
    _, _, quiet_err = score(capsys, pred, "--annotations", llp_dir)
    assert "line 3770" not in quiet_err and "14 rows (8 videos)" in quiet_err


def bad_pred_cases(split):
    names = np.asarray(split.filenames)
    n = len(names)
    zeros = np.zeros((n, 10, 25), np.float32)
    nan = zeros.copy()
    nan[7, 3, 2] = np.nan
    return {
        "missing key": ({"filenames": names, "audio": zeros}, r"missing key\(s\) visual"),
        "wrong shape": (
            {"filenames": names, "audio": zeros[:, :9], "visual": zeros},
            r"audio has shape \(1200, 9, 25\)",
        ),
        "video shape": ({"filenames": names, "audio": zeros, "visual": zeros, "video": zeros}, r"video has shape"),
        "nan": (
            {"filenames": names, "audio": zeros, "visual": nan},
            f"visual holds NaN or infinity for 1 video.*{names[7]}",
        ),
        "missing videos": (
            {"filenames": names[:-12], "audio": zeros[:-12], "visual": zeros[:-12]},
            f"12 video\\(s\\) of the test split have no predictions: {names[-12]}, .*\\(12 in all\\)",
        ),
        "unknown videos": (
            {
                "filenames": np.concatenate([names, ["zzzzzzzzzzz_0_10", "yyyyyyyyyyy_0_10"]]),
                "audio": np.zeros((n + 2, 10, 25)),
                "visual": np.zeros((n + 2, 10, 25)),
            },
            "2 video\\(s\\) not in the test split: zzzzzzzzzzz_0_10, yyyyyyyyyyy_0_10",
        ),
        "duplicates": (
            {"filenames": names[[*range(n), 0]], "audio": zeros[[*range(n), 0]], "visual": zeros[[*range(n), 0]]},
            f"1 video\\(s\\) listed twice: {names[0]}",
        ),
        "object filenames": (
            {"filenames": names.astype(object), "audio": zeros, "visual": zeros},
            "store filenames as a string array",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["missing key", "wrong shape", "video shape", "nan", "missing videos", "unknown videos", "duplicates",
     "object filenames"],
)  # fmt: skip
def test_bad_predictions_give_one_line_errors(tmp_path, llp_dir, test_split, capsys, case):
    arrays, expected = bad_pred_cases(test_split)[case]
    np.savez(tmp_path / "pred.npz", **arrays)
    status, out, err = score(capsys, tmp_path / "pred.npz", "--annotations", llp_dir, "--json", tmp_path / "s.json")
    assert status == 2 and out == ""
    error_lines = [line for line in err.splitlines() if line.startswith("avvp score: error:")]
    assert len(error_lines) == 1
    assert str(tmp_path / "pred.npz") in error_lines[0]
    assert re.search(expected, error_lines[0]), error_lines[0]
    assert not (tmp_path / "s.json").exists()


def test_missing_predictions_file(tmp_path, llp_dir, capsys):
    status, _, err = score(capsys, tmp_path / "absent.npz", "--annotations", llp_dir)
    assert status == 2 and "predictions file not found" in err


def test_no_annotation_folder_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("AVVP_ANNOTATIONS", raising=False)
    status, _, err = score(capsys, tmp_path / "pred.npz")
    assert status == 2 and "HAN authors' repository" in err


def test_annotations_from_environment(tmp_path, llp_dir, test_split, monkeypatch, capsys):
    monkeypatch.setenv("AVVP_ANNOTATIONS", str(llp_dir))
    pred = save(tmp_path / "pred.npz", test_split.filenames, test_split.audio, test_split.visual)
    status, out, _ = score(capsys, pred)
    assert status == 0 and "100.0" in out


def test_bad_annotation_file_fails_unless_skipped(tmp_path, llp_dir, bad_audio_csv, test_split, capsys):
    annotations = tmp_path / "llp"
    annotations.mkdir()
    for name in [*SPLIT_FILES.values(), *DENSE_FILES.values()]:
        shutil.copy(llp_dir / name, annotations / name)
    shutil.copy(bad_audio_csv, annotations / DENSE_FILES["audio"])
    pred = save(tmp_path / "pred.npz", test_split.filenames, test_split.audio, test_split.visual)
    status, _, err = score(capsys, pred, "--annotations", annotations)
    assert status == 2
    assert "3 bad row(s): line 930" in err and "line 931" in err and "line 2449" in err
    json_path = tmp_path / "s.json"
    status, _, err = score(capsys, pred, "--annotations", annotations, "--skip-bad-rows", "--json", json_path)
    assert status == 0 and "skipped 3 bad rows" in err
    # The clean ground truth holds three real test events the skipped rows lose: audio no longer scores 100.
    scores = json.loads(json_path.read_text())
    assert scores["segment"]["audio"] < 100.0 and scores["segment"]["visual"] == 100.0
