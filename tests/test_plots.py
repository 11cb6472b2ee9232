"""`avvp plot recall|tokens|parse`: each writes a PNG that decodes and a CSV with the right rows and numbers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from reference_metrics import reference_event_recall, reference_parse

from avvp.cli import main
from avvp.data.annotations import load_split
from avvp.data.classes import CLASSES, NUM_SEGMENTS
from avvp.reports.plots import plot_class_recall, plot_video_parse


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures the plots save, in order (to inspect what a PNG shows)."""
    from avvp.reports import plots

    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure) or save(figure, path))
    return figures


def assert_png(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0  # not a blank canvas


@pytest.fixture(scope="module")
def mgn_run(tiny_llp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny MGN run (2 epochs, width 8)."""
    run_dir = tmp_path_factory.mktemp("plots") / "mgn-run"
    args = ["train", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(run_dir),
            "--epochs", "2", "--dim", "8", "--depth-audio", "1", "--depth-visual", "1", "--depth-av", "1",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return run_dir


def test_plot_tokens(mgn_run: Path, tmp_path: Path):
    out = tmp_path / "tokens.png"
    assert main(["plot", "tokens", str(mgn_run), "--out", str(out)]) == 0
    assert_png(out)
    rows = read_csv(tmp_path / "tokens.csv")
    records = [json.loads(line) for line in (mgn_run / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["steps"]) for r in rows] == [r["steps"] for r in records]
    for row, record in zip(rows, records):
        for modality in ("audio", "visual"):
            for stat in ("precision", "recall", "f1"):
                for aggregate in ("mean", "min", "max"):  # one run: all three are its score
                    value = float(row[f"{modality}_{stat}_{aggregate}"])
                    assert value == pytest.approx(record["tokens"][modality][stat], abs=0.005)


def _token_run(folder: Path, f1_by_epoch: list[float], steps_per_epoch: int = 10, weak: bool = False) -> Path:
    """A run folder whose metrics.jsonl holds set class-token scores (precision = recall = F1 = the given value;
    visual: half of it; with `weak`, the weak-label reading: audio 1 point more, visual 3 times the value)."""
    folder.mkdir()
    lines = []
    for epoch, f1 in enumerate(f1_by_epoch, start=1):
        scores = {"precision": f1, "recall": f1, "f1": f1}
        tokens = {"split": "val", "audio": scores, "visual": {k: v / 2 for k, v in scores.items()}}
        if weak:
            tokens["weak"] = {
                "audio": {k: v + 1 for k, v in scores.items()},
                "visual": {k: 3 * v for k, v in scores.items()},
            }
        lines.append(json.dumps({"epoch": epoch, "steps": epoch * steps_per_epoch, "tokens": tokens}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_plot_tokens_combines_seeds_up_to_the_shortest_run(tmp_path: Path, capsys):
    runs = [_token_run(tmp_path / "a", [10.0, 40.0, 90.0]), _token_run(tmp_path / "b", [20.0, 80.0])]
    out = tmp_path / "tokens.png"
    assert main(["plot", "tokens", *map(str, runs), "--out", str(out)]) == 0
    assert_png(out)
    rows = read_csv(tmp_path / "tokens.csv")
    assert [(r["epoch"], r["steps"]) for r in rows] == [("1", "10"), ("2", "20")]
    assert [r["audio_f1_mean"] for r in rows] == ["15.00", "60.00"]
    assert [(r["audio_recall_min"], r["audio_recall_max"]) for r in rows] == [("10.00", "20.00"), ("40.00", "80.00")]
    assert [r["visual_precision_mean"] for r in rows] == ["7.50", "30.00"]
    _token_run(tmp_path / "c", [10.0], steps_per_epoch=7)
    capsys.readouterr()
    assert main(["plot", "tokens", str(runs[0]), str(tmp_path / "c"), "--out", str(out)]) == 2
    assert "differ in their steps per epoch" in capsys.readouterr().err


def test_plot_tokens_draws_the_weak_label_reading_when_every_run_has_it(tmp_path: Path, capsys):
    runs = [_token_run(tmp_path / "a", [10.0, 20.0], weak=True), _token_run(tmp_path / "b", [30.0, 40.0], weak=True)]
    out = tmp_path / "tokens.png"
    assert main(["plot", "tokens", *map(str, runs), "--out", str(out)]) == 0
    assert_png(out)
    rows = read_csv(tmp_path / "tokens.csv")
    assert [r["audio_f1_mean"] for r in rows] == ["20.00", "30.00"]  # the dense-truth reading, as before
    assert [r["weak_audio_f1_mean"] for r in rows] == ["21.00", "31.00"]
    assert [(r["weak_visual_recall_min"], r["weak_visual_recall_max"]) for r in rows] == [
        ("30.00", "90.00"),
        ("60.00", "120.00"),
    ]
    printed = capsys.readouterr().out
    assert "against the weak labels: audio 41.0, visual 120.0" in printed and "note:" not in printed


def test_plot_tokens_of_runs_without_the_weak_label_reading_draws_the_first(tmp_path: Path, capsys):
    """Older runs recorded only the dense-truth reading: plotted with a note, not refused."""
    runs = [_token_run(tmp_path / "new", [10.0, 20.0], weak=True), _token_run(tmp_path / "old", [30.0, 40.0])]
    out = tmp_path / "tokens.png"
    assert main(["plot", "tokens", *map(str, runs), "--out", str(out)]) == 0
    assert_png(out)
    header = (tmp_path / "tokens.csv").read_text().splitlines()[0]
    assert "audio_f1_mean" in header and "weak_" not in header
    assert "note: old recorded no weak-label reading" in capsys.readouterr().out


def test_plot_tokens_refuses_the_old_definition(tmp_path: Path, capsys):
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    old = {"audio": {"precision": 100.0, "recall": 100.0, "f1": 100.0}}
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "tokens": old | {"visual": old["audio"]}}) + "\n")
    assert main(["plot", "tokens", str(run_dir), "--out", str(tmp_path / "t.png")]) == 2
    assert "old definition" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


def test_plot_tokens_of_a_run_without_tokens_is_an_error(tmp_path: Path, capsys):
    run_dir = tmp_path / "han-run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": {}, "val": {}}) + "\n")
    assert main(["plot", "tokens", str(run_dir), "--out", str(tmp_path / "t.png")]) == 2
    assert "no class-token scores" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


def test_plot_recall_csv_holds_each_runs_per_class_event_recall(mgn_run: Path, tiny_llp: Path, tmp_path: Path):
    """One column per run: the MGN run's recall as the plain per-video metrics of spec section 5 compute it from its
    cached test predictions, and 100 for every class with a ground-truth event for a run that predicts the ground
    truth (empty where a class has no event). The MGN run is predicted once and its cache reused."""
    split = load_split(tiny_llp, "test")
    truth_run = tmp_path / "truth-run"
    shutil.copytree(mgn_run, truth_run)
    truth = {"audio": split.audio, "visual": split.visual}
    np.savez(truth_run / "test_pred.npz", filenames=np.asarray(split.filenames), video=np.ones(split.labels.shape),
             **{key: value.astype(np.float32) for key, value in truth.items()})  # fmt: skip
    out = tmp_path / "recall.png"
    args = ["plot", "recall", str(mgn_run), str(truth_run), "--labels", "mgn,truth", "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    assert_png(out)
    cache = mgn_run / "test_pred.npz"
    assert cache.is_file()
    rows = read_csv(tmp_path / "recall.csv")
    stats = ("mean", "min", "max")
    assert list(rows[0]) == ["class", "track", "events", *(f"{r} {s}" for r in ("mgn", "truth") for s in stats)]
    tracks = ("audio", "visual", "audio_visual")
    assert [(r["class"], r["track"]) for r in rows] == [(name, track) for track in tracks for name in CLASSES]

    with np.load(cache) as npz:
        assert list(npz["filenames"]) == split.filenames
        pred_audio, pred_visual = reference_parse(npz["audio"], npz["visual"], npz["video"])
    predicted = {"audio": pred_audio, "visual": pred_visual, "audio_visual": pred_audio & pred_visual}
    truth["audio_visual"] = split.audio & split.visual
    for index, track in enumerate(tracks):
        expected = reference_event_recall(predicted[track], truth[track])
        for class_index, recall in enumerate(expected):
            row = rows[index * len(CLASSES) + class_index]
            has_events = bool(truth[track][:, :, class_index].any())
            assert row["events"] == str(_count_events(truth[track][:, :, class_index])), row
            for stat in stats:  # one run per label: its mean, min and max are its recall
                assert row[f"truth {stat}"] == ("100.00" if has_events else ""), row
                assert row[f"mgn {stat}"] == ("" if np.isnan(recall) else f"{recall:.2f}"), row

    # Two folders of the same name are not combined silently: only given labels combine runs.
    twin = tmp_path / "twin" / mgn_run.name
    shutil.copytree(mgn_run, twin)
    assert main(["plot", "recall", str(mgn_run), str(twin), "--out", str(tmp_path / "twin.png")]) == 2

    # Runs under one label (seeds) are combined: their mean, lowest and highest recall per class.
    both = tmp_path / "both.png"
    assert main(["plot", "recall", str(mgn_run), str(truth_run), "--labels", "x,x", "--out", str(both)]) == 0
    for alone, combined in zip(rows, read_csv(tmp_path / "both.csv")):
        if alone["truth mean"] == "":
            assert combined["x mean"] == combined["x min"] == combined["x max"] == ""
            continue
        values = sorted([float(alone["mgn mean"]), 100.0])
        assert float(combined["x mean"]) == pytest.approx(sum(values) / 2, abs=0.006)
        assert (float(combined["x min"]), float(combined["x max"])) == pytest.approx(values, abs=0.006)

    # A second plot reuses the cached predictions.
    stamp = cache.stat().st_mtime_ns
    assert main(["plot", "recall", str(mgn_run), "--out", str(tmp_path / "again.png"), "--device", "cpu"]) == 0
    assert cache.stat().st_mtime_ns == stamp


def _count_events(track: np.ndarray) -> int:
    """Ground-truth events of one class in [N, 10] bool: the maximal runs of true segments."""
    padded = np.pad(track.astype(np.int8), ((0, 0), (1, 0)))
    return int((np.diff(padded, axis=1) == 1).sum())


def test_plot_parse_of_one_video(mgn_run: Path, tiny_llp: Path, tmp_path: Path, capsys, drawn: list):
    assert main(["plot", "recall", str(mgn_run), "--out", str(tmp_path / "r.png"), "--device", "cpu"]) == 0
    split = load_split(tiny_llp, "test")
    filename = split.filenames[2]
    out = tmp_path / "parse.png"
    pred = mgn_run / "test_pred.npz"
    args = ["plot", "parse", str(pred), "--video", filename[:11], "--annotations", str(tiny_llp), "--out", str(out)]
    assert main([*args, "--title", "LLP-Synth: one video"]) == 0
    assert drawn[-1].axes[0].get_title(loc="left").startswith("LLP-Synth: one video\naudio: ")
    assert_png(out)
    rows = read_csv(tmp_path / "parse.csv")
    true_classes = {CLASSES[c] for c in np.flatnonzero(split.audio[2].any(0) | split.visual[2].any(0))}
    shown = {r["class"] for r in rows}
    assert true_classes <= shown
    assert len(rows) == len(shown) * 2 * NUM_SEGMENTS
    for row in rows:
        truth = split.audio[2] if row["track"] == "audio" else split.visual[2]
        assert int(row["true"]) == int(truth[int(row["segment"]), CLASSES.index(row["class"])])

    capsys.readouterr()
    bad = [*args[:4], "nosuchvideo", *args[5:]]
    assert main(bad) == 2
    assert "'nosuchvideo' not in" in capsys.readouterr().err


def test_plot_video_parse_outcomes_and_gate(tmp_path: Path):
    """Hand-made video: the video-level gate removes a class, each segment's outcome is in the CSV."""
    audio = np.zeros((NUM_SEGMENTS, len(CLASSES)))
    visual = np.zeros((NUM_SEGMENTS, len(CLASSES)))
    gt_audio = np.zeros((NUM_SEGMENTS, len(CLASSES)), bool)
    gt_visual = np.zeros((NUM_SEGMENTS, len(CLASSES)), bool)
    video = np.zeros(len(CLASSES))
    audio[0:4, 0] = 0.9  # Speech heard 0-4 s, true 2-6 s: 2 hits, 2 false alarms, 2 misses
    gt_audio[2:6, 0] = True
    video[0] = 0.8
    visual[:, 3] = 0.7  # Dog "seen" everywhere, but its video-level probability 0.2 gates it off: not shown
    video[3] = 0.2
    gt_visual[5:7, 4] = True  # Cat seen 5-7 s, never predicted: 2 misses
    out = tmp_path / "video.png"
    png, csv_file = plot_video_parse(out, filename="handmade_0_10", audio_probs=audio, visual_probs=visual,
                                     gt_audio=gt_audio, gt_visual=gt_visual, video_probs=video)  # fmt: skip
    assert_png(png)
    rows = read_csv(csv_file)
    assert {r["class"] for r in rows} == {"Speech", "Cat"}
    assert len(rows) == 2 * 2 * NUM_SEGMENTS
    speech_audio = [
        (int(r["predicted"]), int(r["true"])) for r in rows if r["class"] == "Speech" and r["track"] == "audio"
    ]
    assert speech_audio == [(1, 0), (1, 0), (1, 1), (1, 1), (0, 1), (0, 1), (0, 0), (0, 0), (0, 0), (0, 0)]
    assert {r["video_probability"] for r in rows if r["class"] == "Speech"} == {"0.8000"}
    cat_visual = [int(r["true"]) for r in rows if r["class"] == "Cat" and r["track"] == "visual"]
    assert cat_visual == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]


def test_plot_class_recall_csv_keeps_nan_as_empty(tmp_path: Path):
    recalls = {
        "HAN": {t: np.linspace(0, 96, len(CLASSES)) for t in ("audio", "visual", "audio_visual")},
        "MGN": {t: np.full(len(CLASSES), np.nan) for t in ("audio", "visual", "audio_visual")},
    }
    recalls["MGN"]["visual"][3] = 50.0
    png, csv_file = plot_class_recall(recalls, tmp_path / "r.png")
    assert_png(png)
    rows = read_csv(csv_file)
    han = {"HAN mean": "4.00", "HAN min": "4.00", "HAN max": "4.00"}
    assert rows[1] == {
        "class": "Car",
        "track": "audio",
        "events": "",
        **han,
        "MGN mean": "",
        "MGN min": "",
        "MGN max": "",
    }
    assert rows[len(CLASSES) + 3]["MGN mean"] == "50.00" and rows[len(CLASSES) + 3]["HAN max"] == "12.00"


def test_plot_class_recall_marks_a_recall_of_zero(tmp_path: Path, drawn: list):
    """A class with events but none found gets a dash at 0 in its label's colour (a zero bar is invisible)."""
    recalls = {"HAN": {t: np.full(len(CLASSES), 50.0) for t in ("audio", "visual", "audio_visual")}}
    recalls["HAN"]["visual"][7] = 0.0
    plot_class_recall(recalls, tmp_path / "r.png")
    dashes = [
        (panel_index, list(line.get_xdata()))
        for panel_index, panel in enumerate(drawn[0].axes)
        for line in panel.get_lines()
        if line.get_marker() == "_" and len(line.get_xdata())
    ]
    assert dashes == [(1, [7.0])]  # the visual panel, class 7 only


def test_plot_rejects_a_non_png_name(mgn_run: Path, tmp_path: Path, capsys):
    assert main(["plot", "tokens", str(mgn_run), "--out", str(tmp_path / "tokens.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
