"""`avvp sweep` with JoMoLD's settings and the loss weights: `--noise-ratios` (one file, or a template per run),
`--denoise-from-epoch`, `--lr-gamma`, `--loss-weight`; each reaches every run, every printed `--only` command and
every `avvp train` command line, and a run folder of another noise-ratio file is refused, not reused."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from conftest import write_noise_ratios

from avvp.cli import build_parser, main
from avvp.cli.sweep import plan_from_args
from avvp.cli.train import config_from_args
from avvp.data.modality_labels import file_sha256
from avvp.run_folder import NOISE_HASH
from avvp.sweep import describe_recipe, plan_runs, sweep_configs, train_command
from avvp.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _sweep(tiny_llp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep", "depth", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(out),
        "--configs", "han", "--epochs", "1", "--dim", "32", "--batch-size", "8", "--device", "cpu", *extra,
    ]  # fmt: skip


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("avvp sweep: error: "), err
    return err


def test_noise_ratio_template_trains_each_run_on_its_file_and_a_changed_file_is_refused(
    tiny_llp: Path, tmp_path: Path, capsys
):
    """Each run trains with its own file (config.json records it and its SHA-256); a missing file stops the sweep
    in one line before anything trains; a file changed since, or another denoising schedule, learning-rate decay or
    loss weight, makes the rerun refuse the finished folder instead of reusing it."""
    out = tmp_path / "sweep"
    template = str(tmp_path / "noise" / "{name}-seed{seed}.json")
    files = {1: write_noise_ratios(tmp_path / "noise" / "han-seed1.json")}
    args = _sweep(tiny_llp, out, "--seeds", "1,2", "--noise-ratios", template, "--denoise-from-epoch", "1")
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert f"--noise-ratios: 1 file(s) not found: {tmp_path / 'noise' / 'han-seed2.json'}" in err
    assert not out.exists()

    files[2] = write_noise_ratios(tmp_path / "noise" / "han-seed2.json", audio=0.5)  # another content: another hash
    assert main(args) == 0
    for seed, path in files.items():
        run = out / f"han-seed{seed}"
        record = json.loads((run / "config.json").read_text())
        assert record["train"]["noise_ratios"] == str(path) and record["train"]["denoise_from_epoch"] == 1
        assert record[NOISE_HASH] == file_sha256(path)
        denoise = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["denoise"]
        assert denoise["from_epoch"] == 1 and denoise["active"]
    assert json.loads((out / "sweep.json").read_text())["train"]["noise_ratios"] == template  # as given
    table = (out / "table.md").read_text()
    assert f"JoMoLD label denoising with the noise ratios {template} from epoch 1" in table
    assert table.startswith("# Table 1: CUG and MCG depths, with JoMoLD denoising\n")  # not the paper's table
    capsys.readouterr()
    assert main(args) == 0
    assert "2 run(s) reused, 0 trained" in capsys.readouterr().out

    original, trained_with = files[1].read_bytes(), file_sha256(files[1])
    write_noise_ratios(files[1], visual=0.25)
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert f"{out / 'han-seed1'} was trained with noise ratios of SHA-256 {trained_with} (sweep: " in err
    assert f"(sweep: {file_sha256(files[1])})" in err
    files[1].write_bytes(original)
    for flags, difference in (
        (["--denoise-from-epoch", "2"], "denoise_from_epoch=1 (sweep: 2)"),
        (["--lr-gamma", "0.5"], "lr_gamma=0.1 (sweep: 0.5)"),
        (["--loss-weight", "p_a=2"], "loss_weights={} (sweep: {'p_a': 2.0})"),
    ):
        changed = [*args, *flags]  # the later flag wins
        assert main(changed) == 2
        assert difference in _one_line_error(capsys)
    assert main(args) == 0  # the original file again: reused
    assert "2 run(s) reused, 0 trained" in capsys.readouterr().out


def test_printed_commands_carry_the_jomold_settings_and_loss_weights(
    tiny_llp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """--print-commands carries --lr-gamma, every --loss-weight, --noise-ratios (the template, absolute) and
    --denoise-from-epoch; the printed command, run in-process, trains its run with the sweep's exact settings."""
    monkeypatch.chdir(tmp_path)
    write_noise_ratios(tmp_path / "noise" / "han-seed1.json", audio=0.2, visual=0.1)
    out = tmp_path / "sweep"
    flags = ["--seeds", "1", "--lr-gamma", "0.5", "--loss-weight", "p_a=2", "--loss-weight", "p_v=0.5",
             "--noise-ratios", "noise/{name}-seed{seed}.json", "--denoise-from-epoch", "1"]  # fmt: skip
    args = _sweep(tiny_llp, out, *flags, "--print-commands")
    assert main(args) == 0
    (line,) = capsys.readouterr().out.splitlines()
    words = shlex.split(line)
    assert words[:3] == [sys.executable, "-m", "avvp"] and words[-2:] == ["--only", "han-seed1"]
    for flag, value in (("--lr-gamma", "0.5"), ("--noise-ratios", str(tmp_path / "noise/{name}-seed{seed}.json")),
                        ("--denoise-from-epoch", "1")):  # fmt: skip
        assert words[words.index(flag) + 1] == value, flag
    assert [words[i + 1] for i, word in enumerate(words) if word == "--loss-weight"] == ["p_a=2.0", "p_v=0.5"]
    (planned,) = plan_from_args(build_parser().parse_args(args))[2]
    (again,) = plan_from_args(build_parser().parse_args(words[3:]))[2]
    assert again.train == planned.train
    assert planned.train.noise_ratios == str(tmp_path / "noise" / "han-seed1.json")
    assert (planned.train.lr_gamma, planned.train.loss_weights) == (0.5, {"p_a": 2.0, "p_v": 0.5})

    monkeypatch.chdir(tiny_llp)  # the printed command runs from any folder
    assert main(words[3:]) == 0
    assert "--only han-seed1: trained" in capsys.readouterr().out
    record = json.loads((out / "han-seed1" / "config.json").read_text())
    assert record["train"] == json.loads(json.dumps(planned.train.to_dict()))
    assert record[NOISE_HASH] == file_sha256(tmp_path / "noise" / "han-seed1.json")
    recipe = json.loads((out / "sweep.json").read_text())["train"]  # written by --print-commands
    assert recipe["noise_ratios"] == "noise/{name}-seed{seed}.json" and recipe["lr_gamma"] == 0.5
    assert recipe["loss_weights"] == {"p_a": 2.0, "p_v": 0.5} and recipe["denoise_from_epoch"] == 1


def test_train_command_carries_the_noise_ratios_and_the_schedule(tmp_path: Path):
    """The `avvp train` line of a run (a worker's log) parses back to the run's whole recipe."""
    base = TrainConfig(lr_gamma=0.3, loss_weights={"p_v": 0.5}, denoise_from_epoch=3)
    (run,) = plan_runs(sweep_configs("depth", ["han"]), [2], tmp_path, base, noise_ratios=str(tmp_path / "n.json"))
    command = train_command(run, tmp_path / "feats", tmp_path / "ann", "cpu", resume=False)
    assert config_from_args(build_parser().parse_args(command[3:])) == run.train
    assert run.train.noise_ratios == str(tmp_path / "n.json") and run.train.denoise_from_epoch == 3


def test_loss_weights_and_schedule_flags_are_checked_before_anything_trains(tiny_llp: Path, tmp_path: Path, capsys):
    """A term that a model of the sweep lacks (HAN has no audio_tokens, MGN has), a malformed weight, a
    non-positive decay factor, denoising from epoch 0, or a missing or invalid noise-ratio file: one line, nothing
    written, with or without --print-commands (--stack with noise ratios trains: tests/test_stacked.py)."""
    out = tmp_path / "sweep"
    noise, bad = (
        str(write_noise_ratios(tmp_path / "noise.json")),
        str(write_noise_ratios(tmp_path / "bad.json", audio=1.5)),
    )
    tokens_of_han = "--loss-weight audio_tokens: not a loss term of HAN"
    for flags, message in (
        (["--loss-weight", "bogus=1"], "--loss-weight bogus: not a loss term of HAN (its terms: p_av, p_a, p_v"),
        (["--configs", "mgn-1-1-2,han", "--loss-weight", "audio_tokens=1"], tokens_of_han),
        (["--loss-weight", "p_a"], "--loss-weight 'p_a': expected NAME=W"),
        (["--lr-gamma", "0"], "--lr-gamma 0.0: must be positive"),
        (["--noise-ratios", noise, "--denoise-from-epoch", "0"], "--denoise-from-epoch 0: epochs count from 1"),
        (["--noise-ratios", str(tmp_path / "missing.json")], "--noise-ratios: 1 file(s) not found"),
        (["--noise-ratios", bad], "audio: Speech: ratio 1.5 is not a number in [0, 1]"),
    ):  # fmt: skip
        for cluster in ([], ["--print-commands"]):
            assert main(_sweep(tiny_llp, out, *flags, *cluster)) == 2, flags
            assert message in _one_line_error(capsys), flags
    assert not out.exists()
    assert main(_sweep(tiny_llp, out, "--configs", "mgn-1-1-2", "--loss-weight", "audio_tokens=0.5",
                       "--print-commands")) == 0  # fmt: skip


def test_the_recipe_line_states_denoising_and_loss_weights():
    recipe = TrainConfig(loss_weights={"p_a": 2.0}, denoise_from_epoch=3).to_dict()
    assert "loss weights" not in describe_recipe(TrainConfig().to_dict())
    assert "JoMoLD" not in describe_recipe(TrainConfig().to_dict())
    text = describe_recipe(recipe | {"noise_ratios": "noise/{name}-seed{seed}.json"})
    assert "loss weights p_a 2 (the other terms at their defaults)" in text
    assert "JoMoLD label denoising with the noise ratios noise/{name}-seed{seed}.json from epoch 3" in text
