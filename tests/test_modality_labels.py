"""Training on modality labels (`avvp train --modality-labels`, `avvp sweep --modality-labels`): the file format and
its refusals, the loss targets, equivalence with weak-label training where nothing is removed, the record and
resume rules, and every training path (in memory, --stream, stacked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli

from avvp.data.annotations import load_split
from avvp.data.classes import CLASSES, NUM_CLASSES
from avvp.data.modality_labels import read_modality_labels, training_targets, write_modality_labels
from avvp.errors import AvvpError
from avvp.objective import loss_targets
from avvp.recipe import TrainConfig

HAN = ["--model", "han", "--dim", "32", "--epochs", "2"]


def _write_labels(path: Path, tiny: Path, drop_audio: int = 0, drop_visual: int = 0) -> Path:
    """The tiny training split's weak labels as modality labels, with the first weak label of the first
    `drop_audio` (`drop_visual`) videos removed from the audio (visual) labels."""
    split = load_split(tiny, "train")
    audio, visual = split.labels.copy(), split.labels.copy()
    for table, count in ((audio, drop_audio), (visual, drop_visual)):
        for row in range(count):
            table[row, np.flatnonzero(table[row])[0]] = 0
    write_modality_labels(path, split.filenames, audio, visual)
    return path


def _train(capsys, tiny: Path, out: Path, *extra) -> tuple[int, str, str]:
    return cli(capsys, "train", "--features", tiny / "feats", "--annotations", tiny, "--out", out, "--device", "cpu",
               "--batch-size", "8", *HAN, *extra)  # fmt: skip


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


# ------------------------------------------------------------------------------------------------ the file


def test_a_label_file_round_trips(tmp_path, tiny_llp) -> None:
    path = _write_labels(tmp_path / "labels.csv", tiny_llp, drop_audio=2, drop_visual=3)
    split = load_split(tiny_llp, "train")
    labels = read_modality_labels(path)
    assert labels.filenames == split.filenames
    assert (split.labels - labels.audio).sum() == 2 and (split.labels - labels.visual).sum() == 3
    targets = training_targets(path, split, split)
    assert targets.shape == (len(split.filenames), 3, NUM_CLASSES)
    assert np.array_equal(targets[:, 0], split.labels) and np.array_equal(targets[:, 2], labels.visual)


def _edit(path: Path, line: int, cells: str) -> Path:
    lines = path.read_text().splitlines()
    lines[line - 1] = cells
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        ("not_subset", "line 2: {video}: visual label(s) {extra} not among its weak labels"),
        ("unknown_video", "1 video(s) not in the training split, e.g. line 2: zzzzzzzzzzz_0_10"),
        ("missing_video", "no row for 1 training video(s): {video}"),
        ("twice", "line 3: video {video} is listed twice (also on line 2)"),
        ("unknown_class", "line 2: {video}: unknown class 'NotAClass'"),
    ],
)
def test_a_bad_label_file_is_refused_naming_the_line_and_video(tmp_path, tiny_llp, edit, message) -> None:
    path = _write_labels(tmp_path / "labels.csv", tiny_llp)
    split = load_split(tiny_llp, "train")
    video = split.filenames[0]
    extra = next(CLASSES[c] for c in range(NUM_CLASSES) if not split.labels[0, c])
    weak = ",".join(CLASSES[c] for c in np.flatnonzero(split.labels[0]))
    if edit == "not_subset":
        _edit(path, 2, f"{video}\t{weak}\t{weak},{extra}")
    elif edit == "unknown_video":
        _edit(path, 2, "zzzzzzzzzzz_0_10\t\t")
    elif edit == "missing_video":
        path.write_text("".join(line + "\n" for i, line in enumerate(path.read_text().splitlines()) if i != 1))
    elif edit == "twice":
        _edit(path, 3, f"{video}\t{weak}\t{weak}")
    else:
        _edit(path, 2, f"{video}\tNotAClass\t{weak}")
    with pytest.raises(AvvpError) as caught:
        training_targets(path, split, split)
    assert str(caught.value).startswith(f"{path}: ")
    assert message.format(video=video, extra=extra) in str(caught.value)


def test_videos_beyond_the_ones_trained_on_are_allowed_but_not_fewer(tmp_path, tiny_llp) -> None:
    from avvp.data.splits import subset_split

    split = load_split(tiny_llp, "train")
    path = _write_labels(tmp_path / "labels.csv", tiny_llp)
    assert len(training_targets(path, split, subset_split(split, 5))) == 5
    _edit(path, len(split.filenames) + 1, "")  # the last video's row blanked: no row for it
    with pytest.raises(AvvpError, match="no row for 1 training video"):
        training_targets(path, split, split)


# ------------------------------------------------------------------------------------------------ the targets


def test_loss_targets_with_modality_labels() -> None:
    config = TrainConfig()
    weak = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    audio = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # class 1 removed from the audio labels
    visual = torch.tensor([[0.0, 1.0, 0.0, 1.0]])  # class 0 removed from the visual labels
    targets = loss_targets(torch.stack([weak, audio, visual], 1), config)
    assert torch.equal(targets.video, weak) and torch.equal(targets.audio, audio)
    torch.testing.assert_close(targets.visual, torch.tensor([[0.0, 0.95, 0.05, 0.95]]), rtol=0, atol=1e-7)
    unchanged, plain = loss_targets(torch.stack([weak, weak, weak], 1), config), loss_targets(weak, config)
    for field in ("video", "audio", "visual"):
        assert torch.equal(getattr(unchanged, field), getattr(plain, field))  # bit for bit what weak labels give


# ------------------------------------------------------------------------------------------------ training


def test_labels_that_remove_nothing_train_exactly_as_weak_labels(tiny_llp, tmp_path, capsys) -> None:
    path = _write_labels(tmp_path / "same.csv", tiny_llp)
    assert _train(capsys, tiny_llp, tmp_path / "weak")[0] == 0
    assert _train(capsys, tiny_llp, tmp_path / "same", "--modality-labels", path)[0] == 0
    weak, same = _weights(tmp_path / "weak"), _weights(tmp_path / "same")
    for key in weak:
        assert torch.equal(weak[key], same[key]), key


def test_training_on_refined_labels_records_them_and_resume_refuses_another_file(tiny_llp, tmp_path, capsys) -> None:
    path = _write_labels(tmp_path / "refined.csv", tiny_llp, drop_audio=6, drop_visual=10)
    assert _train(capsys, tiny_llp, tmp_path / "weak")[0] == 0
    status, _, err = _train(capsys, tiny_llp, tmp_path / "run", "--modality-labels", path)
    assert status == 0, err
    weak, refined = _weights(tmp_path / "weak"), _weights(tmp_path / "run")
    assert any(not torch.equal(weak[key], refined[key]) for key in weak)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["modality_labels"] == str(path.resolve())
    from avvp.data.modality_labels import file_sha256

    assert record["modality_labels_sha256"] == file_sha256(path)
    _write_labels(path, tiny_llp, drop_visual=2)  # the same file, other labels
    status, _, err = _train(capsys, tiny_llp, tmp_path / "run", "--modality-labels", path, "--epochs", "3", "--resume")
    assert status == 2
    assert "modality_labels_sha256" in err and len(err.strip().splitlines()) == 1


def test_a_bad_label_file_stops_training_before_the_run_folder_is_made(tiny_llp, tmp_path, capsys) -> None:
    path = _write_labels(tmp_path / "labels.csv", tiny_llp)
    _edit(path, 2, "zzzzzzzzzzz_0_10\t\t")
    status, _, err = _train(capsys, tiny_llp, tmp_path / "run", "--modality-labels", path)
    assert status == 2 and "not in the training split" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    status, _, err = _train(capsys, tiny_llp, tmp_path / "run", "--modality-labels", tmp_path / "absent.csv")
    assert status == 2 and "modality-label file not found" in err


def test_streaming_with_modality_labels_equals_in_memory(tiny_llp, tmp_path, capsys) -> None:
    path = _write_labels(tmp_path / "refined.csv", tiny_llp, drop_audio=6, drop_visual=10)
    assert _train(capsys, tiny_llp, tmp_path / "memory", "--modality-labels", path)[0] == 0
    stream = ["--modality-labels", path, "--stream", "--loader-workers", "1"]
    assert _train(capsys, tiny_llp, tmp_path / "stream", *stream)[0] == 0
    memory, streamed = _weights(tmp_path / "memory"), _weights(tmp_path / "stream")
    for key in memory:
        assert torch.equal(memory[key], streamed[key]), key


def test_stacked_runs_each_train_on_their_own_labels(tiny_llp, tmp_path, monkeypatch) -> None:
    """Two stacked seeds with different label files: each run's losses are those of its own labels (checked
    against each run trained alone, the noise taken out as in tests/test_stacked.py)."""
    import torch.nn.functional as F

    from avvp.models.layers import hard_softmax
    from avvp.training import train, train_stacked

    monkeypatch.setattr(F, "gumbel_softmax", lambda logits, tau=1.0, hard=True, dim=-1: hard_softmax(logits, dim))
    files = [
        _write_labels(tmp_path / "a.csv", tiny_llp),
        _write_labels(tmp_path / "b.csv", tiny_llp, drop_audio=12, drop_visual=16),
    ]
    overrides = {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 1, "drop_path": 0.0}
    configs = [
        TrainConfig(
            model="mgn",
            seed=seed,
            epochs=2,
            batch_size=8,
            lr=3e-3,
            model_overrides=overrides,
            modality_labels=str(path),
        )
        for seed, path in zip((1, 2), files)
    ]
    paths = {"features": tiny_llp / "feats", "annotations": tiny_llp, "device": "cpu", "progress": False}
    train_stacked(configs, out_dirs=[tmp_path / "s1", tmp_path / "s2"], **paths)
    for config, name in zip(configs, ("1", "2")):
        train(config, out_dir=tmp_path / f"alone{name}", **paths)
        stacked, alone = (
            [
                json.loads(line)["loss"]
                for line in (tmp_path / f"{kind}{name}" / "metrics.jsonl").read_text().splitlines()
            ]
            for kind in ("s", "alone")
        )
        for epoch_stacked, epoch_alone in zip(stacked, alone, strict=True):
            assert epoch_stacked == pytest.approx(epoch_alone, rel=5e-4)


# ------------------------------------------------------------------------------------------------ sweeps


def test_a_sweep_fills_the_template_per_run_and_refuses_missing_files(tiny_llp, tmp_path, capsys) -> None:
    from avvp.sweep import plan_runs, sweep_configs, train_command

    runs = plan_runs(sweep_configs("depth", ["han"]), [1, 2], tmp_path / "out", TrainConfig(),
                     modality_labels=str(tmp_path / "labels" / "{name}-seed{seed}.csv"))  # fmt: skip
    assert [run.train.modality_labels for run in runs] == [
        str(tmp_path / "labels" / f"han-seed{seed}.csv") for seed in (1, 2)
    ]
    command = train_command(runs[1], tiny_llp / "feats", tiny_llp, "cpu", False)
    assert command[command.index("--modality-labels") + 1] == str(tmp_path / "labels" / "han-seed2.csv")
    (tmp_path / "labels").mkdir()
    _write_labels(tmp_path / "labels" / "han-seed1.csv", tiny_llp)
    common = ["sweep", "depth", "--configs", "han", "--features", tiny_llp / "feats", "--annotations", tiny_llp,
              "--out", tmp_path / "out", "--epochs", "1", "--dim", "32", "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    status, _, err = cli(
        capsys, *common, "--seeds", "1,2", "--modality-labels", tmp_path / "labels/{name}-seed{seed}.csv"
    )
    assert status == 2 and "han-seed2.csv" in err and not (tmp_path / "out").exists()
    status, _, err = cli(
        capsys, *common, "--seeds", "1", "--modality-labels", tmp_path / "labels/{name}-seed{seed}.csv"
    )
    assert status == 0, err
    record = json.loads((tmp_path / "out" / "han-seed1" / "config.json").read_text())
    assert record["train"]["modality_labels"] == str(tmp_path / "labels" / "han-seed1.csv")
    assert "trained on the modality labels" in (tmp_path / "out" / "table.md").read_text()
    _write_labels(tmp_path / "labels" / "han-seed1.csv", tiny_llp, drop_visual=3)  # changed since: not reused
    status, _, err = cli(
        capsys, *common, "--seeds", "1", "--modality-labels", tmp_path / "labels/{name}-seed{seed}.csv"
    )
    assert status == 2 and "modality labels of SHA-256" in err
