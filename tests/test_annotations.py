"""LLP annotation readers: the real files in ../shared/llp, the circulating bad file, and small hand-made files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from avvp.data.annotations import (
    DENSE_FILES,
    SPLIT_FILES,
    find_ignored_rows,
    load_split,
    read_dense_events,
    read_dense_labels,
    read_weak_labels,
    video_id,
)
from avvp.data.classes import CLASS_INDEX, NUM_CLASSES, NUM_SEGMENTS
from avvp.errors import AvvpError

WEAK_HEADER = "filename\tevent_labels\n"
DENSE_HEADER = "filename\tonset\toffset\tevent_labels\n"


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "".join(row + "\n" for row in rows))
    return path


def eval_filenames(llp_dir: Path) -> set[str]:
    return set(read_weak_labels(llp_dir / SPLIT_FILES["val"]).filenames) | set(
        read_weak_labels(llp_dir / SPLIT_FILES["test"]).filenames
    )


# ---------------------------------------------------------------------------------------------------------------
# The real files.


def test_video_id_is_the_first_11_characters():
    assert video_id("BjCEufrlXm4_20_30") == "BjCEufrlXm4"
    assert video_id("AP0061o0Nvk_101.8_111.8") == "AP0061o0Nvk"


@pytest.mark.parametrize(("split", "count"), [("train", 10_000), ("val", 649), ("test", 1_200), ("full", 11_849)])
def test_real_weak_lists(llp_dir, split, count):
    weak = read_weak_labels(llp_dir / SPLIT_FILES[split])
    assert len(weak.filenames) == count == len(set(weak.filenames))
    assert weak.labels.shape == (count, NUM_CLASSES) and weak.labels.dtype == np.float32
    assert set(np.unique(weak.labels)) <= {0.0, 1.0}
    assert weak.labels.sum(axis=1).min() >= 1  # every video has at least one label
    assert all(len(vid) == 11 for vid in weak.video_ids)


def test_real_train_list_first_video(llp_dir):
    weak = read_weak_labels(llp_dir / SPLIT_FILES["train"])
    assert weak.filenames[0] == "BjCEufrlXm4_20_30"
    assert np.flatnonzero(weak.labels[0]).tolist() == sorted([CLASS_INDEX["Speech"], CLASS_INDEX["Dog"]])


@pytest.mark.parametrize(("modality", "rows"), [("audio", 4_131), ("visual", 2_495)])
def test_real_dense_files_row_counts(llp_dir, modality, rows):
    assert len(read_dense_events(llp_dir / DENSE_FILES[modality])) == rows


def test_real_audio_file_ignored_rows(llp_dir):
    path = llp_dir / DENSE_FILES["audio"]
    ignored = find_ignored_rows(path, read_dense_events(path), eval_filenames(llp_dir))
    assert len(ignored.no_split) == 14
    assert len({name for _, name in ignored.no_split}) == 8
    assert {"19jWnmYnlD8_30_400", "P7x4FV4lg_570_580"} <= {name for _, name in ignored.no_split}
    assert len(ignored.zero_length) == 5
    assert ignored.onset_after_offset == [(3770, "8DF2PxdT5tE_390_400")]


def test_real_visual_file_ignored_rows(llp_dir):
    path = llp_dir / DENSE_FILES["visual"]
    ignored = find_ignored_rows(path, read_dense_events(path), eval_filenames(llp_dir))
    assert len(ignored.no_split) == 11
    assert len({name for _, name in ignored.no_split}) == 7
    assert not ignored.zero_length and not ignored.onset_after_offset


@pytest.mark.parametrize(("split", "count"), [("val", 649), ("test", 1_200)])
def test_load_real_eval_split(llp_dir, split, count):
    data = load_split(llp_dir, split)
    assert data.name == split and len(data.filenames) == count
    for truth in (data.audio, data.visual):
        assert truth.shape == (count, NUM_SEGMENTS, NUM_CLASSES) and truth.dtype == bool
    # The same ground truth, built the plain way from the raw rows: segments onset .. offset-1 of listed videos.
    row_of = {name: row for row, name in enumerate(data.filenames)}
    for modality, truth in (("audio", data.audio), ("visual", data.visual)):
        expected = np.zeros_like(truth)
        for line in (llp_dir / DENSE_FILES[modality]).read_text().splitlines()[1:]:
            name, onset, offset, label = line.split("\t")
            if name in row_of:
                for segment in range(int(onset), int(offset)):
                    expected[row_of[name], segment, CLASS_INDEX[label]] = True
        np.testing.assert_array_equal(truth, expected)


def test_load_real_split_ground_truth_matches_rows(llp_dir):
    data = load_split(llp_dir, "test")
    row = data.filenames.index("KvIjsmANkxI_10_20")
    # `KvIjsmANkxI_10_20  0  1  Cat` (the row the circulating bad copy breaks with a backtick).
    assert data.audio[row, 0, CLASS_INDEX["Cat"]]


def test_load_split_warns_once_with_counts(llp_dir, caplog):
    with caplog.at_level(logging.DEBUG, logger="avvp.data.annotations"):
        load_split(llp_dir, "test")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "AVVP_eval_audio.csv: 14 rows (8 videos) name videos in no split" in warnings[0]
    assert "5 rows with onset = offset" in warnings[0] and "1 row with onset > offset" in warnings[0]
    assert "AVVP_eval_visual.csv: 11 rows (7 videos)" in warnings[0]
    details = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert len(details) == 14 + 5 + 1 + 11
    assert any("line 3770: 8DF2PxdT5tE_390_400" in line for line in details)


def test_load_train_split_has_no_dense_truth(llp_dir):
    data = load_split(llp_dir, "train")
    assert data.audio is None and data.visual is None
    assert len(data.video_ids) == 10_000


def test_unknown_split(llp_dir):
    with pytest.raises(AvvpError, match="unknown split"):
        load_split(llp_dir, "dev")


# ---------------------------------------------------------------------------------------------------------------
# The circulating corrupted copy.


def test_bad_file_lists_all_three_rows_in_one_line(bad_audio_csv):
    with pytest.raises(AvvpError) as error:
        read_dense_events(bad_audio_csv)
    message = str(error.value)
    assert "\n" not in message
    assert bad_audio_csv.name in message and "3 bad row(s)" in message
    assert "line 930:" in message and "line 931:" in message and "line 2449:" in message
    assert "'Baby_cry_infant_cry'" in message and "'KvIjsmANkxI_10_20`'" in message


def test_bad_file_rows_skipped_on_request(bad_audio_csv, caplog):
    with caplog.at_level(logging.WARNING, logger="avvp.data.annotations"):
        events = read_dense_events(bad_audio_csv, skip_bad_rows=True)
    assert len(events) == 4_131 - 3
    assert any("skipped 3 bad rows" in record.getMessage() for record in caplog.records)


def test_load_split_with_bad_audio_file(llp_dir, bad_audio_csv, tmp_path):
    for name in [*SPLIT_FILES.values(), *DENSE_FILES.values()]:
        shutil.copy(llp_dir / name, tmp_path / name)
    shutil.copy(bad_audio_csv, tmp_path / DENSE_FILES["audio"])
    with pytest.raises(AvvpError, match="line 930.*line 931.*line 2449"):
        load_split(tmp_path, "test")
    skipped = load_split(tmp_path, "test", skip_bad_rows=True)
    clean = load_split(llp_dir, "test")
    # The three broken rows hold three real test events, which are then lost.
    lost = clean.audio & ~skipped.audio
    assert not (skipped.audio & ~clean.audio).any()
    assert lost.any()
    assert {clean.filenames[row] for row in np.flatnonzero(lost.any(axis=(1, 2)))} == {
        "JfZEqeLZqWk_30_40",
        "KvIjsmANkxI_10_20",
    }


# ---------------------------------------------------------------------------------------------------------------
# Small hand-made files.


def test_weak_list_accepts_decimal_times(tmp_path):
    path = write(tmp_path / "list.csv", WEAK_HEADER, ["AP0061o0Nvk_101.8_111.8\tSpeech,Dog", "a-b_c0123_4_0_10\tCat"])
    weak = read_weak_labels(path)
    assert weak.filenames == ["AP0061o0Nvk_101.8_111.8", "a-b_c0123_4_0_10"]
    assert weak.labels[0, CLASS_INDEX["Dog"]] == 1 and weak.labels[1].sum() == 1


def test_weak_list_reports_every_bad_row(tmp_path):
    rows = [
        "BjCEufrlXm4_20_30\tSpeech,Dog",
        "short_20_30\tSpeech",  # id not 11 characters
        "7nSYwyaP4QE_50_60\tSinging,Banjos",  # unknown class
        "BjCEufrlXm4_20_30\tDog",  # listed twice
        "7nSYwyaP4QE_10_20",  # one column
        "7nSYwyaP4QE_50_60\tSinging",
    ]
    path = write(tmp_path / "list.csv", WEAK_HEADER, rows)
    with pytest.raises(AvvpError) as error:
        read_weak_labels(path)
    message = str(error.value)
    assert "\n" not in message and "4 bad row(s)" in message
    assert "line 3: filename 'short_20_30'" in message
    assert "line 4: 7nSYwyaP4QE_50_60: unknown class 'Banjos'" in message
    assert "line 5: video BjCEufrlXm4_20_30 is listed twice (also on line 2)" in message
    assert "line 6: expected 2 tab-separated columns, found 1" in message
    weak = read_weak_labels(path, skip_bad_rows=True)
    assert weak.filenames == ["BjCEufrlXm4_20_30", "7nSYwyaP4QE_50_60"]


def test_wrong_header_and_missing_file(tmp_path):
    path = write(tmp_path / "list.csv", "filename,event_labels\n", ["BjCEufrlXm4_20_30\tSpeech"])
    with pytest.raises(AvvpError, match="line 1: expected the tab-separated header"):
        read_weak_labels(path)
    with pytest.raises(AvvpError, match="not found"):
        read_weak_labels(tmp_path / "absent.csv")


def test_dense_labels_cover_onset_to_offset_minus_one(tmp_path):
    rows = [
        "aaaaaaaaaaa_0_10\t0\t3\tSpeech",
        "aaaaaaaaaaa_0_10\t7\t10\tSpeech",
        "aaaaaaaaaaa_0_10\t5\t5\tDog",  # onset = offset: nothing
        "bbbbbbbbbbb_0_10\t9\t0\tCat",  # onset > offset: nothing
        "ccccccccccc_0_10\t0\t10\tCar",  # a video not asked for
    ]
    path = write(tmp_path / "dense.csv", DENSE_HEADER, rows)
    truth = read_dense_labels(path, ["bbbbbbbbbbb_0_10", "aaaaaaaaaaa_0_10"])
    assert truth.shape == (2, NUM_SEGMENTS, NUM_CLASSES) and truth.dtype == bool
    assert not truth[0].any()
    assert np.flatnonzero(truth[1, :, CLASS_INDEX["Speech"]]).tolist() == [0, 1, 2, 7, 8, 9]
    assert truth[1].sum() == 6


def test_dense_file_reports_every_bad_row(tmp_path):
    rows = [
        "aaaaaaaaaaa_0_10\t0\t3\tSpeech",
        "Speech\t0\t3\tSpeech",  # class name in the filename column
        "aaaaaaaaaaa_0_10`\t0\t3\tSpeech",  # stray backtick
        "aaaaaaaaaaa_0_10\t1.5\t3\tSpeech",  # not an integer
        "aaaaaaaaaaa_0_10\t0\t11\tSpeech",  # beyond 10
        "aaaaaaaaaaa_0_10\t-1\t3\tSpeech",  # negative
        "aaaaaaaaaaa_0_10\t0\t3\tSpeech,Dog",  # one class per row
        "aaaaaaaaaaa_0_10\t0\t3",  # three columns
        "P7x4FV4lg_570_580\t0\t3\tSpeech",  # a shortened id: accepted, in no split
    ]
    path = write(tmp_path / "dense.csv", DENSE_HEADER, rows)
    with pytest.raises(AvvpError) as error:
        read_dense_events(path)
    message = str(error.value)
    assert "7 bad row(s)" in message and "\n" not in message
    for line in range(3, 10):
        assert f"line {line}:" in message
    assert "line 3: the filename column holds the class name 'Speech'" in message
    assert "onset '1.5' is not an integer in 0..10" in message and "offset '11'" in message
    assert "unknown class 'Speech,Dog'" in message
    events = read_dense_events(path, skip_bad_rows=True)
    assert [(e.line, e.filename) for e in events] == [(2, "aaaaaaaaaaa_0_10"), (10, "P7x4FV4lg_570_580")]


def test_many_bad_rows_are_summarised(tmp_path):
    path = write(tmp_path / "list.csv", WEAK_HEADER, [f"bad{i}\tSpeech" for i in range(25)])
    with pytest.raises(AvvpError, match="25 bad row.*line 11:.*and 15 more"):
        read_weak_labels(path)


def test_read_dense_labels_warns_about_videos_in_no_split(tmp_path, caplog):
    rows = ["aaaaaaaaaaa_0_10\t0\t3\tSpeech", "zzzzzzzzzzz_0_10\t0\t3\tSpeech", "zzzzzzzzzzz_0_10\t4\t6\tDog"]
    path = write(tmp_path / "dense.csv", DENSE_HEADER, rows)
    with caplog.at_level(logging.WARNING, logger="avvp.data.annotations"):
        read_dense_labels(path, ["aaaaaaaaaaa_0_10"], known_filenames=["aaaaaaaaaaa_0_10", "bbbbbbbbbbb_0_10"])
    expected = (
        "ignoring annotation rows as the official evaluation does: dense.csv: 2 rows (1 video) name videos in no "
        "split (--verbose lists them)"
    )
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_read_dense_labels_without_known_videos_only_warns_about_empty_events(tmp_path, caplog):
    rows = ["aaaaaaaaaaa_0_10\t0\t3\tSpeech", "zzzzzzzzzzz_0_10\t4\t4\tDog"]
    path = write(tmp_path / "dense.csv", DENSE_HEADER, rows)
    with caplog.at_level(logging.WARNING, logger="avvp.data.annotations"):
        read_dense_labels(path, ["aaaaaaaaaaa_0_10"])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "1 row with onset = offset" in messages[0] and "no split" not in messages[0]


def test_load_split_without_the_other_eval_list(llp_dir, tmp_path, caplog):
    for name in [SPLIT_FILES["test"], *DENSE_FILES.values()]:
        shutil.copy(llp_dir / name, tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="avvp.data.annotations"):
        data = load_split(tmp_path, "test")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "no split" not in messages[0] and "1 row with onset > offset" in messages[0]
    np.testing.assert_array_equal(data.audio, load_split(llp_dir, "test").audio)
