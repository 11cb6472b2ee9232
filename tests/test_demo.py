"""`avvp demo` end to end at a tiny scale, and the pieces of its report."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from reference_metrics import reference_evaluate, reference_parse

from avvp.cli import main
from avvp.data.annotations import load_split
from avvp.data.synth import SynthConfig, load_config
from avvp.demo import TINY_MODEL_OVERRIDES, DemoConfig, pick_video
from avvp.metrics import LEVELS, TRACKS
from avvp.models import count_parameters, create_model
from avvp.reports.demo import DemoRow, markdown_table, text_table

# The recipe docs/demo.md documents (a change of the demo's defaults must change the docs too)
DOCUMENTED = {"train": 3000, "epochs": 13, "lr_step": 11, "patience": 3, "min_epochs": 4}
TINY_ARGS = ["--train", "32", "--val", "12", "--test", "12", "--epochs", "2", "--seed", "3", "--tiny-models"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny demo run (tiny models, 2 epochs): its folder and what it printed (stdout and stderr, as in a log
    file: not a terminal)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        status = main(["demo", "--out", str(out), *TINY_ARGS, "--device", "cpu"])
    assert status == 0
    return out, printed.getvalue()


def test_results_json_has_exactly_the_documented_structure(demo_run):
    out, _ = demo_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"dataset", "models", "oracle_broadcast"}
    assert results["dataset"] == {"train": 32, "val": 12, "test": 12, "seed": 3}
    assert set(results["models"]) == {"mgn", "han"}
    for name, entry in results["models"].items():
        assert set(entry) == {"segment", "event", "parameters", "train_seconds"}
        for level in LEVELS:
            assert set(entry[level]) == set(TRACKS)
            assert all(0.0 <= value <= 100.0 for value in entry[level].values())
        assert entry["parameters"] == count_parameters(create_model(name, **TINY_MODEL_OVERRIDES[name]))
        assert entry["train_seconds"] > 0 and math.isfinite(entry["train_seconds"])
    assert set(results["oracle_broadcast"]) == set(LEVELS)
    for level in LEVELS:
        assert set(results["oracle_broadcast"][level]) == set(TRACKS)


def test_results_json_scores_are_the_spec_metrics_of_the_test_predictions_and_the_oracle(demo_run):
    """results.json against the plain per-video parse and metrics of the official evaluation (tests/reference_metrics.py):
    each model on the test predictions it wrote, the oracle on each test video's labels over all 10 segments."""
    out, _ = demo_run
    results = json.loads((out / "results.json").read_text())
    test_split = load_split(out / "data", "test")
    for name in ("han", "mgn"):
        with np.load(out / "runs" / name / "test_predictions.npz") as predictions:
            assert list(predictions["filenames"]) == test_split.filenames
            pred_audio, pred_visual = reference_parse(predictions["audio"], predictions["visual"], predictions["video"])
        reference = reference_evaluate(pred_audio, pred_visual, test_split.audio, test_split.visual)
        for level in LEVELS:
            assert results["models"][name][level] == pytest.approx(reference[level]["scores"], abs=1e-9), name
    oracle = np.repeat(test_split.labels[:, None, :] > 0, 10, axis=1)  # [N, 10, 25]
    reference = reference_evaluate(oracle, oracle, test_split.audio, test_split.visual)
    for level in LEVELS:
        assert results["oracle_broadcast"][level] == pytest.approx(reference[level]["scores"], abs=1e-9)


def test_report_and_its_figures_exist_and_decode(demo_run):
    import matplotlib.image

    out, printed = demo_run
    report = (out / "report.md").read_text()
    pngs = [part.split(")")[0] for part in report.split("](")[1:]]
    assert "figures/training_curves.png" in pngs
    assert {"figures/test_video_han.png", "figures/test_video_mgn.png"} <= set(pngs)
    for png in pngs:
        image = matplotlib.image.imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    for title in ("HAN", "MGN", "broadcast oracle"):
        assert f"| {title} |" in report
        assert any(line.startswith(title) for line in printed.splitlines())
    assert "Scale: LLP-Synth 32 train / 12 val / 12 test videos" in printed
    assert "StepLR every 10" in printed  # the recipe's step, unscaled: no decay in 2 epochs


def test_a_log_gets_one_line_per_epoch_and_no_progress_bars(demo_run):
    """`make demo > log 2>&1` is not a terminal: no bar redraws, one line per model and epoch."""
    _, printed = demo_run
    assert "\r" not in printed and "step/s" not in printed and "video/s" not in printed
    epoch_lines = [line for line in printed.splitlines() if re.fullmatch(r"epoch [12]/2: loss .*Type@AV.*", line)]
    assert len(epoch_lines) == 4  # HAN and MGN, 2 epochs each
    assert len(printed.splitlines()) < 45


def test_the_expected_time_is_printed_first_and_each_epoch_line_has_an_eta(demo_run):
    """The plan (a step of each model timed at the start) comes before the data; HAN's ETAs include MGN's
    planned training, which follows it, and the last epoch of MGN, the last model, leaves nothing."""
    _, printed = demo_run
    lines = printed.splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("Time: a training step takes HAN "))
    assert plan < next(i for i, line in enumerate(lines) if line.startswith("LLP-Synth: "))
    assert re.search(r"HAN \d+ ms, MGN \d+ ms here \(timed now\); each model trains at most 2 epochs", lines[plan])
    etas = [re.search(r" · ETA (\d+):(\d\d)$", line) for line in lines if line.startswith("epoch ")]
    seconds = [60 * int(m.group(1)) + int(m.group(2)) for m in etas]
    assert len(seconds) == 4 and seconds[-1] == 0


def test_the_eta_of_each_model_adds_the_most_the_later_models_take():
    from avvp.demo import TimePlan

    plan = TimePlan({"han": 0.05, "mgn": 0.15}, {"han": 6.0, "mgn": 15.0}, epochs=30)
    assert plan.training_seconds(["han", "mgn"]) == 30 * 6.0 + 30 * 15.0
    assert plan.time_left("han")(10, 5.0) == 20 * 5.0 + 30 * 15.0  # HAN's 20 epochs left, then MGN's 30
    assert plan.time_left("mgn")(29, 14.0) == 14.0
    assert "HAN 50 ms, MGN 150 ms here" in plan.text() and "at most ~10:30 of training" in plan.text()


def test_time_train_step_leaves_the_random_stream_alone():
    import torch

    from avvp.steps import time_train_step

    config = DemoConfig(model_overrides=TINY_MODEL_OVERRIDES).train_config("mgn")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert time_train_step(config, torch.device("cpu"), warmup=1, timed=1) > 0
    assert torch.equal(torch.rand(3), expected)


def test_the_report_sets_the_numbers_beside_the_published_ones_and_the_calibration(demo_run):
    out, printed = demo_run
    results = json.loads((out / "results.json").read_text())
    for name, published, spread in (("han", "54.0", "54.7 ± 0.1"), ("mgn", "55.6", "54.2 ± 2.1")):
        here = f"{results['models'][name]['segment']['type']:.1f}"
        line = f"{name.upper()}: segment Type@AV {here} here; {spread} on LLP-Synth with the full recipe (3 seeds); "
        line += f"{published} published on real LLP"
        assert line in printed and line in (out / "report.md").read_text()
    assert "calibrated on both published models" in printed


def test_a_second_run_reuses_the_data_and_replaces_the_runs(demo_run, capsys):
    out, _ = demo_run
    data_files = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*") if p.is_file()}
    best_before = (out / "runs" / "han" / "best.safetensors").stat().st_mtime_ns
    (out / ".demo-killed").mkdir()  # the staging folder of a killed run
    assert main(["demo", "--out", str(out), *TINY_ARGS, "--device", "cpu"]) == 0
    assert "reused the cache" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*") if p.is_file()} == data_files
    assert (out / "runs" / "han" / "best.safetensors").stat().st_mtime_ns > best_before
    assert load_config(out / "data") == SynthConfig(train=32, val=12, test=12, seed=3)
    assert not list(out.glob(".demo-*")), "a staging folder is left behind"
    assert sorted(p.name for p in out.iterdir()) == ["data", "figures", "report.md", "results.json", "runs"]


def test_a_cache_of_another_generator_version_is_regenerated(tmp_path, capsys):
    """A demo folder whose data was written by LLP-Synth v1 (synth.json without a version) is not reused."""
    from avvp.demo import prepare_data

    config = SynthConfig(train=6, val=4, test=4, seed=2)
    data = tmp_path / "data"
    data.mkdir()
    (data / "synth.json").write_text(json.dumps({"train": 6, "val": 4, "test": 4, "seed": 2, "nuisance": 0.6}))
    (data / "AVVP_train.csv").write_text("filename\tevent_labels\n")  # stale v1 files
    _, reused = prepare_data(data, config, progress=False)
    assert not reused
    assert "holds LLP-Synth v1: regenerating it as v2" in capsys.readouterr().out
    assert load_config(data) == config
    assert len(load_split(data, "train").filenames) == 6
    _, reused = prepare_data(data, config, progress=False)
    assert reused


def test_scale_arguments_are_checked(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "0"]) == 2
    assert "--epochs 0: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_one_recipe_for_both_models(tmp_path, capsys):
    """The demo trains both models with the same documented recipe (docs/demo.md): the authors' batch and rate, in
    fp32, one late StepLR decay and early stopping, differing only in the model."""
    from avvp.training import TrainConfig

    config = DemoConfig()
    han, mgn = config.train_config("han"), config.train_config("mgn")
    assert dataclasses.replace(han, model="mgn") == mgn
    expected = TrainConfig(model="mgn", epochs=DOCUMENTED["epochs"], batch_size=16, lr=3e-4,
                           lr_step=DOCUMENTED["lr_step"], lr_gamma=0.1, seed=0, precision="fp32",
                           patience=DOCUMENTED["patience"], min_epochs=DOCUMENTED["min_epochs"])  # fmt: skip
    assert mgn == expected and config.train == DOCUMENTED["train"]
    assert f"StepLR x0.1 after epoch {DOCUMENTED['lr_step']}" in config.scale_text()
    for flag in ("--lr-step", "--patience"):
        assert main(["demo", "--out", str(tmp_path / "d"), flag, "0"]) == 2
        assert f"{flag} 0: must be at least 1" in capsys.readouterr().err


def test_pick_video_prefers_several_classes_with_modality_differences():
    audio = np.zeros((3, 10, 25), dtype=bool)
    visual = np.zeros((3, 10, 25), dtype=bool)
    audio[0, :, 0] = visual[0, :, 0] = True  # one class, the same in both modalities
    audio[1, :, [1, 2]] = visual[1, :, [1, 2]] = True  # two classes, identical in both modalities
    audio[2, :, 3] = visual[2, :, 3] = True
    audio[2, :4, 4] = True  # two classes, one heard only
    assert pick_video(audio, visual) == 2
    assert pick_video(audio[:2], visual[:2]) == 0  # none differs: the first with any event
    assert pick_video(np.zeros_like(audio), np.zeros_like(visual)) == 0


def test_tables_show_every_number_and_size():
    segment = {track: 10.0 + i for i, track in enumerate(TRACKS)}
    event = {track: 20.0 + i for i, track in enumerate(TRACKS)}
    rows = [DemoRow("HAN", segment, event, 1_250_000, 12.34), DemoRow("broadcast oracle", segment, event)]
    text = text_table(rows)
    han_line = next(line for line in text.splitlines() if line.startswith("HAN"))
    assert han_line.split()[1:] == [*(f"{v:.1f}" for v in [*segment.values(), *event.values()]), "1,250,000", "5.00",
                                    "12.3"]  # fmt: skip
    oracle_line = next(line for line in text.splitlines() if line.startswith("broadcast oracle"))
    assert oracle_line.split()[-3:] == ["-", "-", "-"]
    markdown = markdown_table(rows).splitlines()
    assert len(markdown) == 4 and markdown[0].count("|") == markdown[2].count("|") == 15
    assert "| HAN | 10.0 | 11.0 | 12.0 | 13.0 | 14.0 | 20.0 |" in markdown[2]
