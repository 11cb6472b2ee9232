"""`avvp sweep`: the table configurations, model sizes, run planning, resumability and the worker pool."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avvp.cli import build_parser, main
from avvp.cli.train import config_from_args
from avvp.errors import AvvpError
from avvp.run_folder import PidLock
from avvp.sweep import (
    assign_configs,
    collect_rows,
    depth_configs,
    plan_runs,
    run_status,
    sweep_configs,
    train_command,
    worker_devices,
)
from avvp.training import TrainConfig
from avvp.utils import LOCK_HOST

RUN_OUTPUTS = ("config.json", "metrics.jsonl", "best.safetensors", "best.json", "last.pt", "test_scores.json")


def test_depth_configs_are_table_1():
    configs = depth_configs()
    assert [c.name for c in configs] == [
        "han", "mgn-1-1-2", "mgn-2-2-4", "mgn-3-3-6", "mgn-4-4-8", "mgn-3-3-3", "mgn-6-6-3"
    ]  # fmt: skip
    assert configs[0].model == "han" and configs[0].method == "HAN"
    assert configs[3].overrides == {"depth_audio": 3, "depth_visual": 3, "depth_av": 6}
    assert configs[6].settings == (("CUG depth", "6/6"), ("MCG depth", "3"))


def test_assign_configs_are_table_2():
    configs = assign_configs()
    assert [c.name for c in configs] == [
        "mgn-3-3-6",
        "mgn-3-3-6-soft-hard",
        "mgn-3-3-6-hard-soft",
        "mgn-3-3-6-hard-hard",
    ]
    assert configs[2].overrides["unimodal_assign"] == "hard" and configs[2].overrides["crossmodal_assign"] == "soft"
    assert configs[1].settings == (("CUG assignment", "Softmax"), ("MCG assignment", "Hard-Softmax"))
    assert all(c.overrides["depth_av"] == 6 for c in configs)


def test_sweep_configs_subset_and_unknown_names():
    assert [c.name for c in sweep_configs("depth", ["mgn-3-3-6", "han"])] == ["han", "mgn-3-3-6"]  # table order
    with pytest.raises(AvvpError, match="mgn-9-9-9 not in the depth sweep"):
        sweep_configs("depth", ["mgn-9-9-9"])
    with pytest.raises(AvvpError, match="unknown sweep"):
        sweep_configs("width")


def _official_parameters(keys_file: Path) -> dict[str, int]:
    """Key -> parameter count of an authors' checkpoint, from its key<TAB>shape listing in ../shared/spec (whose
    header line states the total: checked here)."""
    header, *lines = keys_file.read_text().splitlines()
    counts = {}
    for line in lines:
        key, shape = line.split("\t")
        counts[key] = math.prod(int(size) for size in shape.split("x"))
    assert f" {sum(counts.values())} parameters." in header, keys_file
    return counts


def test_sweep_model_size_column_counts_the_authors_checkpoints(official_keys_dir: Path, tmp_path: Path):
    """The Model Size column of every depth-sweep row against the authors' released checkpoints (their key
    listings in ../shared/spec/official_keys): HAN as released and without the modules its forward never uses
    (spec section 4), MGN (3,3,6) exactly, the other depths as that checkpoint with SelfBlocks added or removed."""
    han = _official_parameters(official_keys_dir / "MMIL_Net_HAN.txt")
    unused = ("audio_encoder.", "visual_encoder.", "cmt_encoder.", "hat_encoder.norm1.", "hat_encoder.norm2.")
    han_used = sum(count for key, count in han.items() if not key.startswith(unused))
    mgn = _official_parameters(official_keys_dir / "MGN_Net_dim128_aud3_vis3_av6.txt")
    blocks = {}  # (stack, index) -> parameters of one SelfBlock of the 3/3/6 checkpoint
    for key, count in mgn.items():
        parts = key.split(".")
        if parts[1:2] == ["blocks"]:
            blocks[parts[0], parts[2]] = blocks.get((parts[0], parts[2]), 0) + count
    assert len(blocks) == 3 + 3 + 6 and len(set(blocks.values())) == 1  # twelve identical SelfBlocks
    per_block = next(iter(blocks.values()))
    without_blocks = sum(mgn.values()) - 12 * per_block

    configs = depth_configs()
    rows = collect_rows(configs, plan_runs(configs, [1], tmp_path, TrainConfig()))  # one row per config, in order
    by_name = {config.name: row.size for config, row in zip(configs, rows, strict=True)}
    assert by_name["han"].released_parameters == sum(han.values()) == 9_307_723
    assert by_name["han"].parameters == han_used
    assert by_name["han"].released_megabytes == pytest.approx(sum(han.values()) * 4 / 1e6)  # float32, 10^6 bytes
    assert by_name["han"].megabytes == pytest.approx(han_used * 4 / 1e6)
    assert by_name["mgn-3-3-6"].parameters == sum(mgn.values()) == 4_366_065
    for config in (config for config in configs if config.model == "mgn"):
        depths = config.overrides["depth_audio"] + config.overrides["depth_visual"] + config.overrides["depth_av"]
        expected = without_blocks + depths * per_block
        assert by_name[config.name].parameters == expected, config.name
        assert by_name[config.name].megabytes == pytest.approx(expected * 4 / 1e6), config.name  # float32, 10^6 B


def test_plan_runs_folders_seeds_and_dim(tmp_path: Path):
    configs = sweep_configs("depth", ["han", "mgn-1-1-2"])
    runs = plan_runs(configs, [3, 1], tmp_path, TrainConfig(epochs=5), dim=16)
    assert [r.run_dir.name for r in runs] == ["han-seed3", "mgn-1-1-2-seed3", "han-seed1", "mgn-1-1-2-seed1"]
    assert all(r.run_dir.parent == tmp_path for r in runs)
    assert runs[1].train.model == "mgn" and runs[1].train.seed == 3 and runs[1].train.epochs == 5
    assert runs[1].train.model_overrides == {"depth_audio": 1, "depth_visual": 1, "depth_av": 2, "dim": 16}
    assert runs[0].train.model_overrides == {"dim": 16}
    with pytest.raises(AvvpError, match="listed twice"):
        plan_runs(configs, [1, 1], tmp_path, TrainConfig())
    with pytest.raises(AvvpError, match="at least one seed"):
        plan_runs(configs, [], tmp_path, TrainConfig())


def test_run_folders_are_matched_by_resolved_model_config(tmp_path: Path):
    """A depth-sweep mgn-3-3-6 run is reused by the assign sweep's Softmax/Softmax row; another model is refused."""
    from avvp.models import make_config

    depth_run = plan_runs(sweep_configs("depth", ["mgn-3-3-6"]), [1], tmp_path, TrainConfig(epochs=3))[0]
    assign_run = plan_runs(sweep_configs("assign", ["mgn-3-3-6"]), [1], tmp_path, TrainConfig(epochs=3))[0]
    assert depth_run.run_dir == assign_run.run_dir
    assert depth_run.train.model_overrides != assign_run.train.model_overrides
    features, annotations = tmp_path / "feats", tmp_path / "ann"
    record = {
        "train": depth_run.train.to_dict(),
        "model": {"name": "mgn", "config": make_config("mgn", **depth_run.train.model_overrides).to_dict()},
        "features": str(features),
        "annotations": str(annotations),
    }
    depth_run.run_dir.mkdir()
    (depth_run.run_dir / "config.json").write_text(json.dumps(record))
    assert run_status(assign_run, features, annotations) == "restart"
    (depth_run.run_dir / "last.pt").write_bytes(b"")
    assert run_status(assign_run, features, annotations) == "resume"
    (depth_run.run_dir / "test_scores.json").write_text("{}")
    assert run_status(assign_run, features, annotations) == "done"
    hard = plan_runs(sweep_configs("assign", ["mgn-3-3-6-hard-hard"]), [1], tmp_path, TrainConfig(epochs=3))[0]
    (hard.run_dir).mkdir()
    (hard.run_dir / "config.json").write_text(json.dumps(record))  # a soft/soft model in the hard/hard folder
    with pytest.raises(AvvpError, match="model config"):
        run_status(hard, features, annotations)
    with pytest.raises(AvvpError, match="features="):
        run_status(assign_run, tmp_path / "other", annotations)


def test_worker_devices():
    assert worker_devices(["cpu"], None) == ["cpu"]
    assert worker_devices(["cpu"], 3) == ["cpu", "cpu", "cpu"]
    assert worker_devices(["cuda:0", "cuda:1"], None) == ["cuda:0", "cuda:1"]
    assert worker_devices(["cuda:0", "cuda:1"], 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(AvvpError):
        worker_devices(["cpu"], 0)


def test_train_command_parses_back_to_the_run(tmp_path: Path):
    """The subprocess command line is a valid `avvp train` call carrying the whole recipe."""
    config = sweep_configs("assign", ["mgn-3-3-6-hard-soft"])[0]
    base = TrainConfig(epochs=7, batch_size=8, max_train_videos=50, precision="fp32")
    run = plan_runs([config], [4], tmp_path, base, dim=32)[0]
    command = train_command(run, tmp_path / "feats", tmp_path / "ann", "cpu", resume=True)
    assert command[:4] == [sys.executable, "-m", "avvp", "train"]
    args = build_parser().parse_args(command[3:])
    assert (args.model, args.epochs, args.batch_size, args.seed, args.max_train_videos) == ("mgn", 7, 8, 4, 50)
    assert args.precision == "fp32" and args.lr == base.lr and args.lr_step == base.lr_step
    assert args.resume and args.out == str(run.run_dir) and args.device == "cpu"
    parsed = config_from_args(args)
    assert parsed.model_overrides == {"depth_audio": 3, "depth_visual": 3, "depth_av": 6, "unimodal_assign": "hard",
                                      "crossmodal_assign": "soft", "dim": 32}  # fmt: skip
    assert parsed == run.train  # the whole recipe, every field


def test_lock_refuses_a_live_sweep_and_clears_a_dead_one(tmp_path: Path):
    lock = tmp_path / ".sweep.lock"
    lock.write_text(f"{os.getppid()}\n")  # a live process that is not this one
    with pytest.raises(AvvpError, match="in use by another sweep"), PidLock(lock, "another sweep"):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")
    with PidLock(lock, "another sweep"):
        assert lock.read_text().split() == [str(os.getpid()), LOCK_HOST]
    assert not lock.exists()


def _sweep_args(tiny_llp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep", "depth", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(out),
        "--epochs", "1", "--dim", "8", "--device", "cpu", *extra,
    ]  # fmt: skip


def _table_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sweep_end_to_end_then_resume_after_a_kill(tiny_llp: Path, tmp_path: Path, capsys):
    out = tmp_path / "sweep"
    args = _sweep_args(tiny_llp, out, "--configs", "han,mgn-1-1-2", "--seeds", "1,2")
    assert main(args) == 0
    names = ["han-seed1", "mgn-1-1-2-seed1", "han-seed2", "mgn-1-1-2-seed2"]
    for name in names:
        assert all((out / name / f).is_file() for f in RUN_OUTPUTS), name
    rows = _table_rows(out)
    assert [(r["method"], r["cug_depth"], r["mcg_depth"], r["seeds"]) for r in rows] == [
        ("HAN", "–", "–", "1;2"), ("MGN", "1/1", "2", "1;2")
    ]  # fmt: skip
    seed_scores = [json.loads((out / f"han-seed{s}" / "test_scores.json").read_text()) for s in (1, 2)]
    mean = sum(s["segment"]["type"] for s in seed_scores) / 2
    assert float(rows[0]["segment_type_mean"]) == pytest.approx(mean, abs=1e-4)
    table = (out / "table.md").read_text()
    assert "| Method | CUG depth | MCG depth | Model Size (MB) | Parameters |" in table and " ± " in table
    assert "**" in table and "## Event level" in table
    assert "## Runs" in table and "| han-seed1 | 1 | no | 1 |" in table and "| mgn-1-1-2-seed2 | 1 | no | 1 |" in table
    assert json.loads((out / "sweep.json").read_text())["kind"] == "depth"

    # Simulated kills: one run died after its last epoch was saved but before the test scores (last.pt, no
    # test_scores.json), one died before its first epoch ended (config.json only). The other two are finished.
    (out / "mgn-1-1-2-seed2" / "test_scores.json").unlink()
    for name in ("last.pt", "best.safetensors", "best.json", "test_scores.json", "metrics.jsonl"):
        (out / "han-seed2" / name).unlink()
    kept = {name: (out / name / "test_scores.json").stat().st_mtime_ns for name in ("han-seed1", "mgn-1-1-2-seed1")}
    capsys.readouterr()
    assert main(args) == 0
    assert "2 run(s) reused, 1 trained, 1 resumed, 0 failed" in capsys.readouterr().out
    for name in names:
        assert all((out / name / f).is_file() for f in RUN_OUTPUTS), name
    assert {name: (out / name / "test_scores.json").stat().st_mtime_ns for name in kept} == kept
    epochs = [json.loads(line)["epoch"] for line in (out / "han-seed2" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]
    assert not (out / ".sweep.lock").exists()

    # The same folder with another recipe is refused before anything trains.
    assert main(_sweep_args(tiny_llp, out, "--configs", "han", "--seeds", "1", "--lr-step", "5")) == 2
    assert "lr_step=10 (sweep: 5)" in capsys.readouterr().err
    record = json.loads((out / "sweep.json").read_text())  # untouched by the refused command
    assert record["train"]["lr_step"] == 10 and [r["name"] for r in record["runs"]] == names

    # --table-only rebuilds the table from the finished runs (here only seed 1 of HAN requested).
    assert main(_sweep_args(tiny_llp, out, "--configs", "han", "--seeds", "1", "--table-only")) == 0
    assert [r["seeds"] for r in _table_rows(out)] == ["1"]


def test_raising_epochs_continues_the_finished_runs(tiny_llp: Path, tmp_path: Path, capsys):
    """--epochs is safe to change on resume: a sweep asked for more epochs trains its finished runs on from their
    last.pt; fewer epochs, or any other recipe change, is refused before anything trains."""
    out = tmp_path / "sweep"
    common = ("--configs", "mgn-1-1-2", "--seeds", "1")
    assert main(_sweep_args(tiny_llp, out, *common)) == 0
    first = json.loads((out / "mgn-1-1-2-seed1" / "test_scores.json").read_text())
    assert first["last_epoch"] == 1
    capsys.readouterr()
    longer = [*_sweep_args(tiny_llp, out, *common)[: -len(common)], *common]
    longer[longer.index("--epochs") + 1] = "2"
    assert main(longer) == 0
    assert "0 run(s) reused, 0 trained, 1 resumed, 0 failed" in capsys.readouterr().out
    run = out / "mgn-1-1-2-seed1"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "test_scores.json").read_text())["last_epoch"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["resumed"] == [{"after_epoch": 1, "changed": {"epochs": [1, 2]}}]
    assert main(longer) == 0
    assert "1 run(s) reused" in capsys.readouterr().out
    longer[longer.index("--epochs") + 1] = "3"
    assert main([*longer, "--lr", "0.001"]) == 2
    assert "lr=0.0003 (sweep: 0.001)" in capsys.readouterr().err
    longer[longer.index("--epochs") + 1] = "1"
    assert main(longer) == 2
    assert "epochs=2 (sweep: 1)" in capsys.readouterr().err


def test_partial_folder_with_foreign_files_is_not_deleted(tiny_llp: Path, tmp_path: Path, capsys):
    out = tmp_path / "sweep"
    run_dir = out / "mgn-1-1-2-seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    assert main(_sweep_args(tiny_llp, out, "--configs", "mgn-1-1-2", "--seeds", "1")) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (run_dir / "notes.txt").exists()


def test_sweep_with_two_worker_processes(tiny_llp: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    assert main(_sweep_args(tiny_llp, out, "--configs", "mgn-1-1-2", "--seeds", "1,2", "--workers", "2")) == 0
    for seed in (1, 2):
        assert (out / f"mgn-1-1-2-seed{seed}" / "test_scores.json").is_file()
        log = (out / "logs" / f"mgn-1-1-2-seed{seed}.log").read_text()
        assert "-m avvp train" in log and "--seed " + str(seed) in log
    assert [r["seeds"] for r in _table_rows(out)] == ["1;2"]


def test_table_only_without_runs_is_an_error(tiny_llp: Path, tmp_path: Path, capsys):
    assert main(_sweep_args(tiny_llp, tmp_path / "none", "--table-only", "--seeds", "1")) == 2
    assert "no finished run" in capsys.readouterr().err


def test_sweep_takes_the_recipe_flags_and_records_them_per_run(tiny_llp: Path, tmp_path: Path, capsys):
    """Learning rate, StepLR step, early stopping and the number of training videos reach every run's config.json
    (and its metrics: the lr per epoch); bad values are one clear error."""
    out = tmp_path / "sweep"
    recipe = ["--lr", "1e-3", "--lr-step", "2", "--patience", "5", "--min-epochs", "1", "--max-train-videos", "16"]
    assert main(_sweep_args(tiny_llp, out, "--configs", "han", "--seeds", "1", "--epochs", "3", *recipe)) == 0
    record = json.loads((out / "han-seed1" / "config.json").read_text())
    train = record["train"]
    assert (train["lr"], train["lr_step"], train["patience"], train["min_epochs"]) == (1e-3, 2, 5, 1)
    assert train["max_train_videos"] == 16 and record["train_videos"] == 16
    lrs = [json.loads(line)["lr"] for line in (out / "han-seed1" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4])
    for flags, message in ((["--lr", "0"], "--lr 0.0: must be positive"), (["--lr-step", "0"], "--lr-step 0")):
        assert main(_sweep_args(tiny_llp, tmp_path / "other", *flags)) == 2
        assert message in capsys.readouterr().err


def test_a_sweep_with_nothing_left_removes_the_locks_a_killed_one_left(tiny_llp: Path, tmp_path: Path):
    """A sweep killed after its last run (writing the tables) left .sweep.lock, a run killed after its test left
    .train.lock: the rerun, finding every run finished, removes both (found by bench/kill_campaign.py); a live
    owner's lock stays."""
    out = tmp_path / "sweep"
    args = _sweep_args(tiny_llp, out, "--configs", "mgn-1-1-2", "--seeds", "1")
    assert main(args) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".sweep.lock").write_text(f"{dead.pid}\n")
    (out / "mgn-1-1-2-seed1" / ".train.lock").write_text(f"{dead.pid}\n")
    assert main(args) == 0
    assert not (out / ".sweep.lock").exists() and not (out / "mgn-1-1-2-seed1" / ".train.lock").exists()
    (out / ".sweep.lock").write_text(f"{os.getppid()}\n")  # alive
    assert main(args) == 0 and (out / ".sweep.lock").exists()


def test_a_setting_an_older_run_did_not_record_counts_as_its_default(tmp_path: Path):
    """Sweep reuse compares every recipe field; one missing from an older config.json means the field's default."""
    from avvp.models import make_config

    run = plan_runs(sweep_configs("depth", ["han"]), [1], tmp_path, TrainConfig(epochs=3))[0]
    features, annotations = tmp_path / "feats", tmp_path / "ann"
    old_train = {k: v for k, v in run.train.to_dict().items() if k not in ("loss_weights", "cross_modal")}
    record = {
        "train": old_train,
        "model": {"name": "han", "config": make_config("han").to_dict()},
        "features": str(features),
        "annotations": str(annotations),
    }
    run.run_dir.mkdir()
    (run.run_dir / "config.json").write_text(json.dumps(record))
    (run.run_dir / "test_scores.json").write_text("{}")
    assert run_status(run, features, annotations) == "done"
    weighted = dataclasses.replace(run, train=dataclasses.replace(run.train, loss_weights={"p_a": 2.0}))
    with pytest.raises(AvvpError, match=r"loss_weights=\{\} \(sweep: \{'p_a': 2.0\}\)"):
        run_status(weighted, features, annotations)
