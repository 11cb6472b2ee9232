"""`avvp train --tensorboard DIR` (`avvp.training.tensorboard`): the TensorBoard scalars are metrics.jsonl's values
at step = the epoch, the loss terms weighted; a resumed run shows each epoch once (the events a killed run wrote
after its last saved epoch are purged); only rank 0 writes under torchrun; stacked runs write a subfolder each; the
option is not a setting (not in config.json, free on --resume); without the package the flag is one error line
before the run folder is touched, and `import avvp` / `avvp train --help` never import it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, write_noise_ratios

import avvp.training.loop
from avvp.errors import AvvpError
from avvp.recipe import TrainConfig
from avvp.training import train_stacked

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MGN = ["--model", "mgn", "--dim", "32", "--depth-audio", "1", "--depth-visual", "1", "--depth-av", "1"]
TINY_HAN = ["--model", "han", "--dim", "16"]
SCORES = ("audio", "visual", "audio_visual", "type", "event")
TOKENS = ("precision", "recall", "f1")


def _args(tiny: Path, out: Path, *extra) -> list:
    data = ["--features", tiny / "feats", "--annotations", tiny, "--device", "cpu", "--batch-size", "8"]
    return ["train", "--out", out, *data, *extra]


def _scalars(board: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files in `board`, as TensorBoard shows it: (step, value) of each event."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(board), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _raw_steps(board: Path, tag: str) -> list[int]:
    """The steps of every event of `tag` in the files, purged or not."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(board.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _expected(record: dict, weights: dict[str, float]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, by the documented tags."""
    expected = {"loss/total": record["loss"]["total"], "lr": record["lr"]}
    expected |= {f"loss/{k}": weights.get(k, 1.0) * v for k, v in record["loss"].items() if k != "total"}
    expected |= {f"val/{level}/{s}": record["val"][level][s] for level in ("segment", "event") for s in SCORES}
    expected |= {f"time/{k}": record[k] for k in ("train_seconds", "epoch_seconds", "videos_per_second")}
    if "tokens" in record:
        expected |= {f"val/tokens/{m}/{s}": record["tokens"][m][s] for m in ("audio", "visual") for s in TOKENS}
        weak = record["tokens"]["weak"]  # the weak-label reading of the same tokens
        expected |= {f"val/tokens/weak/{m}/{s}": weak[m][s] for m in ("audio", "visual") for s in TOKENS}
    for key in ("removed", "precision", "recall"):  # JoMoLD's, where defined
        values = record.get("denoise", {}).get(key) or {}
        expected |= {f"denoise/{key}/{m}": v for m, v in values.items() if v is not None}
    return expected


def _assert_board_is_metrics(board: Path, run: Path, weights: dict[str, float] | None = None) -> None:
    """One event per epoch per tag, each equal (float32) to metrics.jsonl's value of that epoch."""
    records = _metrics(run)
    scalars = _scalars(board)
    expected = [_expected(record, weights or {}) for record in records]
    assert set(scalars) == set(expected[0])
    for tag, events in scalars.items():
        assert [step for step, _ in events] == [record["epoch"] for record in records], tag
        values = [value for _, value in events]
        assert values == pytest.approx([e[tag] for e in expected], rel=1e-6, abs=1e-12), tag


def test_scalars_are_the_metrics_of_every_epoch_with_weighted_loss_terms(tiny_llp: Path, tmp_path: Path, capsys):
    run, board = tmp_path / "run", tmp_path / "board"
    weights = {"p_v": 3.0, "visual_tokens": 0.25}
    flags = ["--loss-weight", "p_v=3", "--loss-weight", "visual_tokens=0.25", "--tensorboard", board]
    status, _, err = cli(capsys, *_args(tiny_llp, run, *TINY_MGN, "--epochs", "2", *flags))
    assert status == 0, err
    _assert_board_is_metrics(board, run, weights)
    scalars, records = _scalars(board), _metrics(run)
    for epoch, record in enumerate(records):  # the weighted terms, as they enter the total
        assert scalars["loss/p_v"][epoch][1] == pytest.approx(3 * record["loss"]["p_v"], rel=1e-6)
        assert scalars["loss/visual_tokens"][epoch][1] == pytest.approx(
            0.25 * record["loss"]["visual_tokens"], rel=1e-6
        )
        assert scalars["loss/p_a"][epoch][1] == pytest.approx(record["loss"]["p_a"], rel=1e-6)
        terms = sum(scalars[f"loss/{k}"][epoch][1] for k in record["loss"] if k != "total")
        assert terms == pytest.approx(scalars["loss/total"][epoch][1], rel=1e-5)
    assert "tensorboard" not in (run / "config.json").read_text()  # a run option, not a setting


def test_jomold_removals_are_scalars_too(tmp_path: Path, capsys) -> None:
    """On LLP-Synth (its truth known) with every ratio 1 from epoch 1: the labels removed per modality and the
    removals' precision and recall, each epoch."""
    from avvp.data.synth import SynthConfig, generate

    data = tmp_path / "synth"
    generate(data, SynthConfig(train=24, val=8, test=8, seed=3), progress=False)
    noise = write_noise_ratios(tmp_path / "noise.json", audio=1.0, visual=1.0)
    run, board = tmp_path / "run", tmp_path / "board"
    flags = ["--noise-ratios", noise, "--denoise-from-epoch", "1", "--tensorboard", board, "--epochs", "2"]
    status, _, err = cli(capsys, *_args(data, run, *TINY_HAN, *flags))
    assert status == 0, err
    _assert_board_is_metrics(board, run)
    for tag in ("removed", "precision", "recall"):
        assert {f"denoise/{tag}/audio", f"denoise/{tag}/visual"} <= set(_scalars(board))


def _next_second() -> None:
    """Event files are read in the order of their names, which begin with their creation second: a resumed run's
    file sorts after the killed run's (in real use, where a resume comes seconds or more later, it always does)."""
    time.sleep(1.05 - time.time() % 1)


def test_a_resumed_run_shows_each_epoch_once(tiny_llp: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A run killed after logging epoch 3 but before saving it (last.pt at epoch 2) resumes at epoch 3: TensorBoard
    purges the killed run's epoch 3 and shows the resumed one's, once per tag; the option may be dropped on resume."""
    run, board = tmp_path / "run", tmp_path / "board"
    train = _args(tiny_llp, run, *TINY_HAN, "--tensorboard", board)
    save_state = avvp.training.loop._save_state

    def killed_at_3(run, standing, epoch, best):
        if epoch == 3:
            raise KeyboardInterrupt  # as Ctrl-C between epoch 3's metrics and its last.pt
        save_state(run, standing, epoch, best)

    with monkeypatch.context() as patch:
        patch.setattr(avvp.training.loop, "_save_state", killed_at_3)
        assert cli(capsys, *train, "--epochs", "3")[0] == 130
    assert [step for step, _ in _scalars(board)["loss/total"]] == [1, 2, 3]  # written and closed on Ctrl-C
    _next_second()
    status, _, err = cli(capsys, *train, "--epochs", "3", "--resume")
    assert status == 0, err
    assert [record["epoch"] for record in _metrics(run)] == [1, 2, 3]
    _assert_board_is_metrics(board, run)  # exactly one event per epoch per tag, the resumed run's
    assert _raw_steps(board, "loss/total") == [1, 2, 3, 3]  # the killed run's epoch 3 is on disk, purged
    status, _, err = cli(capsys, *_args(tiny_llp, run, *TINY_HAN, "--epochs", "4", "--resume"))
    assert status == 0, err  # without --tensorboard: not refused, and nothing more written
    assert _raw_steps(board, "loss/total") == [1, 2, 3, 3]
    assert "tensorboard" not in (run / "config.json").read_text()


def test_without_the_package_the_flag_is_one_error_line(tiny_llp: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run, board = tmp_path / "run", tmp_path / "board"
    status, out, err = cli(capsys, *_args(tiny_llp, run, *TINY_HAN, "--epochs", "1", "--tensorboard", board))
    assert status == 2 and err.count("\n") == 1 and out == ""
    assert "needs the tensorboard package, which is not installed: pip install tensorboard" in err
    assert not run.exists() and not board.exists()


def test_import_avvp_and_train_help_do_not_import_tensorboard() -> None:
    code = (
        "import sys, avvp, avvp.training\n"
        "from avvp.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert not any(m.split('.')[0] == 'tensorboard' or m.startswith('torch.utils.tensorboard') "
        "for m in sys.modules), 'tensorboard imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--tensorboard DIR" in result.stdout


def test_under_torchrun_rank_0_writes_one_event_per_epoch(tiny_llp: Path, tmp_path: Path) -> None:
    run, board = tmp_path / "run", tmp_path / "board"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [str(a) for a in _args(tiny_llp, run, *TINY_HAN, "--epochs", "2", "--tensorboard", board)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561"]
    result = subprocess.run(
        [*command, "-m", "avvp", *args], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(board.glob("events.out.tfevents.*"))) == 1
    _assert_board_is_metrics(board, run)


def test_stacked_runs_write_a_subfolder_each(tiny_llp: Path, tmp_path: Path) -> None:
    configs = [
        TrainConfig(model="han", seed=seed, epochs=2, batch_size=8, model_overrides={"dim": 16}) for seed in (1, 2)
    ]
    runs = [tmp_path / "seed1", tmp_path / "seed2"]
    paths = {"features": tiny_llp / "feats", "annotations": tiny_llp, "device": "cpu", "progress": False}
    train_stacked(configs, out_dirs=runs, tensorboard=tmp_path / "board", **paths)
    assert sorted(p.name for p in (tmp_path / "board").iterdir()) == ["seed1", "seed2"]
    for run in runs:
        _assert_board_is_metrics(tmp_path / "board" / run.name, run)
    same_names = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    with pytest.raises(AvvpError, match="run folders of different names, not run"):
        train_stacked(configs, out_dirs=same_names, tensorboard=tmp_path / "board2", **paths)
    assert not (tmp_path / "a").exists() and not (tmp_path / "board2").exists()
