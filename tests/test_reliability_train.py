"""Reliability of `avvp train` run folders: resume rules, the lock, damaged states, runs killed early, data checked
before anything is written."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from avvp.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

HAN = ["--model", "han", "--dim", "32", "--batch-size", "8", "--device", "cpu"]


def _train(tiny: Path, out: Path, *extra: str) -> int:
    return main(
        ["train", "--features", str(tiny / "feats"), "--annotations", str(tiny), "--out", str(out), *HAN, *extra]
    )


def _error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def one_epoch(tiny_llp: Path, tmp_path: Path) -> Path:
    """A run folder after one finished epoch (of 1)."""
    out = tmp_path / "run"
    assert _train(tiny_llp, out, "--epochs", "1") == 0
    return out


@pytest.mark.parametrize(
    "flags, difference",
    [
        (["--lr", "1e-3"], "lr: 0.0003 -> 0.001"),
        (["--batch-size", "4"], "batch_size: 8 -> 4"),
        (["--seed", "5"], "seed: 1 -> 5"),
        (["--dim", "64"], "model:"),
        (["--max-train-videos", "10"], "max_train_videos: None -> 10"),
    ],
)
def test_resume_with_other_settings_is_refused_listing_them(tiny_llp, one_epoch, capsys, flags, difference):
    config_before = (one_epoch / "config.json").read_text()
    args = ["--epochs", "2", "--resume", *flags]
    if "--dim" in flags:  # replace the --dim of HAN
        args = ["--epochs", "2", "--resume"]
        status = main(
            ["train", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(one_epoch),
             "--model", "han", "--dim", "64", "--batch-size", "8", "--device", "cpu", *args]
        )  # fmt: skip
    else:
        status = _train(tiny_llp, one_epoch, *args)
    assert status == 2
    err = _error(capsys)
    assert "was trained with other settings" in err and difference in err
    assert (one_epoch / "config.json").read_text() == config_before
    assert len((one_epoch / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_with_another_dataset_is_refused(tiny_llp, one_epoch, tmp_path, capsys):
    """The data are compared as resolved paths: a symlink to the same features is the same dataset, a copy of the
    annotations elsewhere is another one."""
    link = tmp_path / "feats_link"
    link.symlink_to(tiny_llp / "feats", target_is_directory=True)
    args = ["train", "--annotations", str(tiny_llp), "--out", str(one_epoch), *HAN, "--resume"]
    assert main([*args, "--features", str(link), "--epochs", "2"]) == 0
    capsys.readouterr()
    other = tmp_path / "other_annotations"
    other.mkdir()
    for csv in tiny_llp.glob("*.csv"):
        (other / csv.name).write_bytes(csv.read_bytes())
    args = ["train", "--features", str(tiny_llp / "feats"), "--annotations", str(other), "--out", str(one_epoch)]
    assert main([*args, *HAN, "--resume", "--epochs", "3"]) == 2
    assert "annotations: " in _error(capsys)


def test_more_epochs_on_resume_is_allowed_and_recorded(tiny_llp, one_epoch):
    assert _train(tiny_llp, one_epoch, "--epochs", "3", "--resume") == 0
    records = [json.loads(line) for line in (one_epoch / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["resumed"] == {"after_epoch": 1, "changed": {"epochs": [1, 3]}}
    assert "resumed" not in records[0] and "resumed" not in records[2]
    config = json.loads((one_epoch / "config.json").read_text())
    assert config["train"]["epochs"] == 3
    assert config["resumed"] == [{"after_epoch": 1, "changed": {"epochs": [1, 3]}}]


def test_fewer_epochs_than_trained_is_refused(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_llp, out, "--epochs", "2") == 0
    assert _train(tiny_llp, out, "--epochs", "1", "--resume") == 2
    assert "has trained 2 epochs already" in _error(capsys)


def test_a_second_train_into_a_locked_folder_stops(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".train.lock").write_text(f"{os.getppid()}\n")  # a live process that is not this one
    assert _train(tiny_llp, out, "--epochs", "1") == 2
    assert "in use by another `avvp train`" in _error(capsys)
    assert sorted(p.name for p in out.iterdir()) == [".train.lock"]


def test_the_lock_is_held_while_training_and_released_after(tiny_llp, tmp_path, monkeypatch):
    import avvp.train

    seen = []
    validate = avvp.train._validate

    def spy(run, *args):
        seen.append((run.out_dir / ".train.lock").read_text().strip())
        return validate(run, *args)

    monkeypatch.setattr(avvp.train, "_validate", spy)
    out = tmp_path / "run"
    assert _train(tiny_llp, out, "--epochs", "1") == 0
    assert seen == [str(os.getpid())]
    assert not (out / ".train.lock").exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("damage", ["truncated", "empty", "malicious", "plain state dict", "text"])
def test_a_damaged_last_pt_is_one_clear_error(tiny_llp, one_epoch, tmp_path, capsys, damage):
    state = one_epoch / "last.pt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "empty":
        state.write_bytes(b"")
    elif damage == "malicious":
        state.write_bytes(pickle.dumps({"model": _Exploit(marker)}))
    elif damage == "plain state dict":
        torch.save(torch.load(state, weights_only=True)["model"], state)
    else:
        state.write_text("not a checkpoint\n")
    assert _train(tiny_llp, one_epoch, "--epochs", "2", "--resume") == 2
    err = _error(capsys)
    assert str(state) in err and ("cannot be read" in err or "not a training state" in err)
    assert "weights_only=False" not in err
    assert not marker.exists()


def test_a_last_pt_of_another_model_is_one_clear_error(tiny_llp, one_epoch, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(other),
                 "--model", "han", "--dim", "64", "--batch-size", "8", "--device", "cpu",
                 "--epochs", "1"]) == 0  # fmt: skip
    (one_epoch / "last.pt").write_bytes((other / "last.pt").read_bytes())
    assert _train(tiny_llp, one_epoch, "--epochs", "2", "--resume") == 2
    assert "does not fit this model" in _error(capsys)


def _killed_in_epoch_one(tiny: Path, out: Path, *flags: str) -> None:
    """What a run killed during epoch 1 leaves: its config.json (and a stale temporary)."""
    assert _train(tiny, out, "--epochs", "1", *flags) == 0
    for name in ("last.pt", "metrics.jsonl", "best.safetensors", "best.json", "test_scores.json"):
        (out / name).unlink()
    (out / ".last.pt.1234.tmp").write_bytes(b"partial")


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_run_killed_before_its_first_checkpoint_starts_again(tiny_llp, tmp_path, capsys, resume):
    out = tmp_path / "run"
    _killed_in_epoch_one(tiny_llp, out)
    assert _train(tiny_llp, out, "--epochs", "1", *resume) == 0
    assert "stopped before its first checkpoint; starting it again" in _error(capsys)
    assert (out / "test_scores.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_killed_run_of_another_configuration_is_not_cleared(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    _killed_in_epoch_one(tiny_llp, out, "--lr", "1e-3")
    assert _train(tiny_llp, out, "--epochs", "1") == 2
    assert "is not empty" in _error(capsys)
    assert (out / "config.json").exists()


def test_a_missing_test_feature_stops_train_before_anything_is_written(tiny_llp, tmp_path, capsys):
    data = tmp_path / "llp"
    data.mkdir()
    for item in tiny_llp.iterdir():
        if item.name != "feats":
            (data / item.name).symlink_to(item)
    test_id = (tiny_llp / "AVVP_test_pd.csv").read_text().splitlines()[1].split("\t")[0][:11]
    for sub in ("vggish", "res152", "r2plus1d_18"):
        (data / "feats" / sub).mkdir(parents=True)
        for npy in (tiny_llp / "feats" / sub).iterdir():
            if not (sub == "r2plus1d_18" and npy.stem == test_id):
                (data / "feats" / sub / npy.name).symlink_to(npy)
    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "1") == 2
    err = _error(capsys)
    assert f"video {test_id}" in err and "r2plus1d_18" in err and "file not found" in err
    assert not out.exists()


def test_a_test_feature_of_the_wrong_shape_stops_train_before_anything_is_written(tiny_llp, tmp_path, capsys):
    import shutil

    import numpy as np

    data = tmp_path / "llp"
    shutil.copytree(tiny_llp, data)
    test_id = (tiny_llp / "AVVP_test_pd.csv").read_text().splitlines()[1].split("\t")[0][:11]
    np.save(data / "feats" / "vggish" / f"{test_id}.npy", np.zeros((9, 128), np.float32))
    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "1") == 2
    assert "expected float32 (10, 128)" in _error(capsys)
    assert not out.exists()


def test_out_under_a_regular_file_is_one_clear_error(tiny_llp, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _train(tiny_llp, blocker / "run", "--epochs", "1") == 2
    assert "cannot create the run folder" in _error(capsys)
