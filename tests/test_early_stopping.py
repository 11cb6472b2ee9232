"""Validation-based early stopping (TrainConfig.patience / min_epochs): the rule, `train` (alone, resumed, stacked),
the CLI flags of train and sweep; the ETA on each epoch line; the bf16 warning on CPUs without native bf16.

The validation scores are scripted (a wrapper over the real `score_split` replaces the val split's Type@AV by a
given sequence per model), so each test knows the epoch at which the run must stop."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

import avvp.precision
import avvp.training.loop
from avvp.cli import main
from avvp.recipe import TrainConfig
from avvp.sweep import plan_runs, sweep_configs, train_command
from avvp.training import train, train_stacked
from avvp.utils import format_duration

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_HAN = {"dim": 32, "ff_dim": 32}


@pytest.mark.parametrize(
    ("patience", "min_epochs", "best_by_epoch", "stop_epoch"),
    [
        (3, 0, {1: 1, 2: 2, 3: 2, 4: 2, 5: 2}, 5),  # best at 2, three epochs without: stop after 5
        (3, 10, {e: 2 for e in range(1, 20)}, 13),  # counted only after epoch 10
        (3, 10, {**{e: 2 for e in range(1, 12)}, **{e: 12 for e in range(12, 20)}}, 15),  # best at 12 > 10
        (1, 0, {1: 1, 2: 2, 3: 3, 4: 3}, 4),  # a tie counts as better (the best epoch keeps the later one)
        (None, 0, {e: 1 for e in range(1, 50)}, None),  # no patience: never
    ],
)
def test_the_stopping_rule(patience, min_epochs, best_by_epoch, stop_epoch):
    config = TrainConfig(patience=patience, min_epochs=min_epochs)
    stops = [epoch for epoch, best in sorted(best_by_epoch.items()) if config.stops_after(epoch, best)]
    assert (stops[0] if stops else None) == stop_epoch


@pytest.fixture
def scripted_val(monkeypatch):
    """`script(*sequences)`: the n-th model created gets the n-th sequence as its validation Type@AV, epoch by
    epoch (from `start`, for a resumed run); test scoring stays real."""
    real = avvp.training.loop.score_split
    state: dict = {"sequences": [], "models": {}}

    def scripted(model, data, **kwargs):
        scores, predictions = real(model, data, **kwargs)
        if data.split.name == "val":
            # The entry holds the model itself, so that its id cannot be reused by a later model once it is freed.
            calls = state["models"].setdefault(id(model), {"sequence": None, "calls": 0, "model": model})
            if calls["sequence"] is None:
                sequence, start = state["sequences"].pop(0)
                calls["sequence"], calls["calls"] = sequence, start - 1
            scores.segment["type"] = calls["sequence"][calls["calls"]]
            calls["calls"] += 1
        return scores, predictions

    monkeypatch.setattr(avvp.training.loop, "score_split", scripted)

    def script(*sequences, start: int = 1):
        state["sequences"] += [(list(sequence), start) for sequence in sequences]

    return script


def _config(**fields) -> TrainConfig:
    base = {"model": "han", "epochs": 8, "batch_size": 8, "seed": 1, "model_overrides": TINY_HAN}
    return TrainConfig(**(base | fields))


def _paths(tiny: Path) -> dict:
    return {"features": tiny / "feats", "annotations": tiny, "device": "cpu"}


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


SEQUENCE = [10, 20, 15, 15, 12, 30, 40, 50]  # best at 2; with patience 2 the run stops after epoch 4


def test_train_stops_early_and_keeps_the_best_epoch(tiny_llp, tmp_path, scripted_val, capsys):
    scripted_val(SEQUENCE)
    result = train(_config(patience=2), out_dir=tmp_path / "run", **_paths(tiny_llp))
    out = capsys.readouterr().out
    assert _epochs(tmp_path / "run") == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.epochs_trained == 4
    assert "early stop after epoch 4: no better validation Type@AV for 2 epochs (best: epoch 2, 20.00)" in out
    assert json.loads((tmp_path / "run" / "best.json").read_text())["metadata"]["epoch"] == 2
    test_scores = json.loads((tmp_path / "run" / "test_scores.json").read_text())
    assert (test_scores["best_epoch"], test_scores["last_epoch"], test_scores["stopped_early"]) == (2, 4, True)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["stopped"] is True
    config = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (config["patience"], config["min_epochs"]) == (2, 0)


def test_min_epochs_delays_the_count(tiny_llp, tmp_path, scripted_val):
    scripted_val(SEQUENCE)
    result = train(_config(patience=2, min_epochs=5), out_dir=tmp_path / "run", **_paths(tiny_llp))
    assert _epochs(tmp_path / "run") == list(range(1, 9)) and result.best_epoch == 8  # 6, 7, 8 improve: no stop
    assert json.loads((tmp_path / "run" / "test_scores.json").read_text())["stopped_early"] is False


def test_resume_continues_the_count_exactly_and_a_stopped_run_stays_stopped(tiny_llp, tmp_path, scripted_val, capsys):
    scripted_val(SEQUENCE)
    train(_config(patience=2), out_dir=tmp_path / "straight", **_paths(tiny_llp))
    scripted_val(SEQUENCE)
    train(_config(patience=2, epochs=3), out_dir=tmp_path / "resumed", **_paths(tiny_llp))  # killed after 3, say
    scripted_val(SEQUENCE, start=4)
    result = train(_config(patience=2), out_dir=tmp_path / "resumed", resume=True, **_paths(tiny_llp))
    assert _epochs(tmp_path / "resumed") == [1, 2, 3, 4] and result.best_epoch == 2
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert resumed["stopped"] is True and resumed["epoch"] == 4
    capsys.readouterr()
    result = train(_config(patience=2, epochs=10), out_dir=tmp_path / "resumed", resume=True, **_paths(tiny_llp))
    assert _epochs(tmp_path / "resumed") == [1, 2, 3, 4] and result.epochs_trained == 4
    assert "stopped early after epoch 4; nothing left to train" in capsys.readouterr().out


def test_stacked_runs_stop_each_at_its_own_epoch(tiny_llp, tmp_path, scripted_val):
    scripted_val(SEQUENCE, [10, 20, 30, 40, 30, 20, 10, 5])  # the second run: best at 4, stops after 6
    configs = [_config(model="mgn", patience=2, seed=seed, model_overrides={"dim": 16}) for seed in (1, 2)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    results = train_stacked(configs, out_dirs=dirs, **_paths(tiny_llp), progress=False)
    assert [_epochs(d) for d in dirs] == [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]
    assert [(r.best_epoch, r.epochs_trained) for r in results] == [(2, 4), (4, 6)]


def test_train_and_sweep_flags(tiny_llp, tmp_path, capsys):
    common = ["--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--model", "han"]
    for flags, message in (
        (["--patience", "0"], "--patience 0: must be at least 1"),
        (["--min-epochs", "3"], "--min-epochs 3: only with --patience"),
        (["--patience", "2", "--min-epochs", "-1"], "--min-epochs -1: must be at least 0"),
    ):
        assert main(["train", *common, "--out", str(tmp_path / "run"), *flags]) == 2
        assert message in capsys.readouterr().err
        assert main(["sweep", "depth", *common[:4], "--out", str(tmp_path / "sweep"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    (run,) = plan_runs(sweep_configs("depth", ["han"]), [1], tmp_path / "sweep", _config(patience=3, min_epochs=7))
    assert (run.train.patience, run.train.min_epochs) == (3, 7)
    command = train_command(run, tiny_llp / "feats", tiny_llp, "cpu", False)
    assert command[command.index("--patience") + 1] == "3" and command[command.index("--min-epochs") + 1] == "7"


def test_each_epoch_line_ends_with_an_eta(tiny_llp, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--features", str(tiny_llp / "feats"), "--annotations",
                 str(tiny_llp), "--model", "han", "--dim", "32", "--epochs", "2", "--device", "cpu"]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(re.search(r" · ETA \d+:\d\d$", line) for line in lines)
    assert lines[-1].endswith("ETA 0:00")
    assert [format_duration(s) for s in (0, 59.4, 61, 3599.6, 3725, -3)] == ["0:00", "0:59", "1:01", "1:00:00",
                                                                             "1:02:05", "0:00"]  # fmt: skip


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns_with_the_slowdown(monkeypatch, caplog, native):
    monkeypatch.setattr(avvp.precision, "native_bf16_cpu", lambda: native)
    with caplog.at_level(logging.WARNING, logger="avvp.precision"):
        assert avvp.precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"
        assert avvp.precision.resolve_precision("auto", torch.device("cpu")) == "fp32"
        assert avvp.precision.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    warnings = [record.getMessage() for record in caplog.records]
    if native:
        assert warnings == []
    else:
        assert len(warnings) == 1 and "without native bf16" in warnings[0] and "20x slower" in warnings[0]
        assert "3,346 ms against 167" in warnings[0]
