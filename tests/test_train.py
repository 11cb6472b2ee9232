"""Training end to end on tiny data through the CLI: run folder contents, resume equivalence, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avvp.cli import main

TINY_MGN = ["--dim", "32", "--depth-audio", "1", "--depth-visual", "1", "--depth-av", "1"]


def _train(tiny: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--features",
            str(tiny / "feats"),
            "--annotations",
            str(tiny),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "8",
            *extra,
        ]
    )


@pytest.mark.parametrize("model", ["mgn", "han"])
def test_train_writes_run_folder(tiny_llp: Path, tmp_path: Path, model: str) -> None:
    out = tmp_path / model
    extra = TINY_MGN if model == "mgn" else ["--dim", "64"]
    assert _train(tiny_llp, out, "--model", model, "--epochs", "2", *extra) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line["val"]["segment"]) == {"audio", "visual", "audio_visual", "type", "event"}
        assert line["loss"]["total"] > 0
        assert ("tokens" in line) == (model == "mgn")
    assert lines[0]["lr"] == pytest.approx(3e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == model and config["train"]["epochs"] == 2
    test_scores = json.loads((out / "test_scores.json").read_text())
    assert 0 <= test_scores["segment"]["type"] <= 100
    assert (out / "best.safetensors").exists() and (out / "last.pt").exists()
    assert [line["steps"] for line in lines] == [3, 6]  # the tiny set's 24 training videos in batches of 8


def test_token_scores_are_those_of_the_val_predictions(tiny_llp: Path, tmp_path: Path) -> None:
    """metrics.jsonl's class-token scores are token_scores of the epoch's own val predictions (p_a, p_v)."""
    from avvp.checkpoint import load_model
    from avvp.data.splits import load_split_data
    from avvp.inference import predict
    from avvp.metrics import token_scores

    out = tmp_path / "mgn"
    assert _train(tiny_llp, out, "--model", "mgn", "--epochs", "1", *TINY_MGN) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["tokens"]
    model, _ = load_model(out / "best.safetensors")
    val = load_split_data(tiny_llp / "feats", tiny_llp, "val")
    predictions = predict(model, val.features, batch_size=4, device=torch.device("cpu"))
    assert record["split"] == "val"
    assert record["audio"] == token_scores(predictions["audio_video"], val.split.audio)
    assert record["visual"] == token_scores(predictions["visual_video"], val.split.visual)
    weak = record["weak"]  # the second reading: each modality's tokens against the video's weak labels
    assert weak["audio"] == token_scores(predictions["audio_video"], val.split.labels)
    assert weak["visual"] == token_scores(predictions["visual_video"], val.split.labels)


def test_resume_gives_the_same_weights(tiny_llp: Path, tmp_path: Path) -> None:
    """2 epochs in one go == 1 epoch, then --resume to 2 (CPU, same seed): identical final weights."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--model", "mgn", *TINY_MGN, "--unimodal-assign", "hard", "--lr-step", "1"]
    assert _train(tiny_llp, straight, "--epochs", "2", *common) == 0
    assert _train(tiny_llp, resumed, "--epochs", "1", *common) == 0
    assert _train(tiny_llp, resumed, "--epochs", "2", "--resume", *common) == 0
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_file(straight / "best.safetensors").keys() == load_file(resumed / "best.safetensors").keys()


def test_a_finished_run_trained_on_drops_its_old_test_scores(tiny_llp: Path, tmp_path: Path, monkeypatch) -> None:
    """--resume with more --epochs: the 1-epoch test scores are stale once training goes on; a run killed during the
    extension has none (so a sweep does not take it as finished), and the finished extension writes new ones."""
    import avvp.training.loop

    out = tmp_path / "run"
    assert _train(tiny_llp, out, "--epochs", "1", *TINY_MGN) == 0
    assert (out / "test_scores.json").is_file()

    def killed(run, stepper, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(avvp.training.loop, "_train_epoch", killed)
        assert _train(tiny_llp, out, "--epochs", "2", "--resume", *TINY_MGN) == 130  # as Ctrl-C
    assert not (out / "test_scores.json").exists()
    assert _train(tiny_llp, out, "--epochs", "2", "--resume", *TINY_MGN) == 0
    assert json.loads((out / "test_scores.json").read_text())["last_epoch"] == 2


def test_train_refuses_non_empty_out(tiny_llp: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    assert _train(tiny_llp, out, "--epochs", "1", *TINY_MGN) == 2
    assert "not empty" in capsys.readouterr().err


def test_han_rejects_mgn_flags(tiny_llp: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _train(tiny_llp, tmp_path / "run", "--model", "han", "--depth-av", "2") == 2
    assert "--depth-av" in capsys.readouterr().err
    assert _train(tiny_llp, tmp_path / "run2", "--model", "mgn", "--dropout", "0") == 2
    assert "--dropout" in capsys.readouterr().err


def test_clamped_bce_equals_torch_bce() -> None:
    from avvp.objective import clamp_bce

    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(32, 25, generator=generator)
    probs[0, :3] = torch.tensor([0.0, 1.0, 1e-9])
    target = (torch.rand(32, 25, generator=generator) < 0.2).float() * 0.9 + 0.05
    expected = torch.nn.functional.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), target, reduction="none")
    torch.testing.assert_close(clamp_bce(probs, target), expected.mean(dim=1))


def test_divergence_is_a_clear_error(tiny_llp: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = _train(tiny_llp, tmp_path / "run", "--model", "han", "--dim", "32", "--epochs", "1", "--lr", "1e30")
    assert status == 2
    assert "training diverged" in capsys.readouterr().err


def test_streaming_equals_in_memory(tiny_llp: Path, tmp_path: Path) -> None:
    """--stream reads batches from disk through a DataLoader; same batches, same math, same dropout noise (the
    loader draws from its own generator), same weights."""
    common = ["--model", "han", "--dim", "32", "--epochs", "2"]
    assert _train(tiny_llp, tmp_path / "memory", *common) == 0
    assert _train(tiny_llp, tmp_path / "stream", *common, "--stream", "--loader-workers", "1") == 0
    a = torch.load(tmp_path / "memory" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "stream" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_atomic_writes_have_normal_permissions(tmp_path: Path) -> None:
    import os

    from avvp.utils import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode == os.stat(tmp_path / "b.txt").st_mode
