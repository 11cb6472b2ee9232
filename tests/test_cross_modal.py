"""The cross-modal-free form (`forward(..., cross_modal=False)`, `avvp train --no-cross-modal`): each modality's
predictions see that modality alone; the form is recorded in config.json and the checkpoint and every later forward
of the run uses it; a model without the form refuses the flag in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli

import avvp
from avvp.data.store import open_features
from avvp.errors import AvvpError
from avvp.models import create_model, registry

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"mgn": {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 1}, "han": {"dim": 32, "ff_dim": 32}}


def _inputs(seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(3, 10, 128, generator=generator),
        torch.rand(3, 10, 2048, generator=generator),
        torch.rand(3, 10, 512, generator=generator),
    )


@pytest.mark.parametrize("name", ["mgn", "han"])
def test_each_modality_sees_itself_alone_without_the_exchange(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).eval()
    audio, res152, r2plus1d = _inputs(1)
    _, other_res152, other_r2plus1d = _inputs(2)
    other_audio = _inputs(3)[0]
    with torch.no_grad():
        free = model(audio, res152, r2plus1d, cross_modal=False)
        other_visual = model(audio, other_res152, other_r2plus1d, cross_modal=False)
        other_sound = model(other_audio, res152, r2plus1d, cross_modal=False)
        full = model(audio, res152, r2plus1d)
        full_other_visual = model(audio, other_res152, other_r2plus1d)
    for key in ("p_a", "audio"):  # the audio predictions do not move with the visual track
        torch.testing.assert_close(getattr(other_visual, key), getattr(free, key), rtol=0, atol=1e-6)
    for key in ("p_v", "visual"):  # nor the visual ones with the audio
        torch.testing.assert_close(getattr(other_sound, key), getattr(free, key), rtol=0, atol=1e-6)
    assert not torch.allclose(full_other_visual.p_a, full.p_a, atol=1e-4)  # with the exchange, they do
    assert not torch.allclose(other_visual.p_av, free.p_av, atol=1e-4)  # p_av still fuses both


def test_the_form_is_recorded_and_used_by_every_later_forward(tiny_llp: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    data = ["--features", tiny_llp / "feats", "--annotations", tiny_llp, "--device", "cpu"]
    status, _, err = cli(capsys, "train", "--model", "han", "--dim", "32", "--out", run, *data, "--epochs", "1",
                         "--batch-size", "8", "--no-cross-modal")  # fmt: skip
    assert status == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["cross_modal"] is False
    assert json.loads((run / "best.json").read_text())["cross_modal"] is False

    model = avvp.load_model(run / "best.safetensors")
    assert model.cross_modal is False
    names = [line.split("\t")[0] for line in (tiny_llp / "AVVP_test_pd.csv").read_text().splitlines()[1:]]
    predictions = avvp.predict(model, tiny_llp / "feats", videos=names)
    features = open_features(tiny_llp / "feats").load([n[:11] for n in names], pooled=True)
    inputs = [torch.from_numpy(a) for a in (features.audio, features.res152, features.r2plus1d)]
    with torch.no_grad():
        free, full = model(*inputs, cross_modal=False), model(*inputs)
    np.testing.assert_array_equal(predictions["audio_video"], free.p_a.numpy())
    assert not np.allclose(predictions["audio_video"], full.p_a.numpy(), atol=1e-5)
    # `avvp evaluate` (and validation, test, refine-labels: every forward goes through the same predict) agrees
    status, _, err = cli(capsys, "evaluate", "--checkpoint", run / "best.safetensors", *data, "--json", tmp_path / "s")
    assert status == 0, err
    test_scores = json.loads((run / "test_scores.json").read_text())
    assert json.loads((tmp_path / "s").read_text())["segment"] == test_scores["segment"]
    assert avvp.evaluate(predictions, tiny_llp, "test").segment == test_scores["segment"]


def test_a_model_without_the_form_refuses_the_flag(monkeypatch: pytest.MonkeyPatch, tiny_llp: Path, tmp_path, capsys):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = registry.get_spec("han")
    registry._REGISTRY["han-only"] = registry.ModelSpec(
        "han-only", spec.config, spec.factory, "tests", "HAN-ONLY", cross_modal_free=False
    )
    with pytest.raises(AvvpError, match="HAN-ONLY has no cross-modal-free form"):
        create_model("han-only", cross_modal=False)
    data = ["--features", tiny_llp / "feats", "--annotations", tiny_llp, "--device", "cpu"]
    status, _, err = cli(capsys, "train", "--model", "han-only", "--out", tmp_path / "r", *data, "--no-cross-modal")
    assert status == 2 and err.count("\n") == 1 and "has no cross-modal-free form (--no-cross-modal)" in err
    assert not (tmp_path / "r").exists()


def test_flags_are_never_abbreviated(tiny_llp: Path, tmp_path: Path, capsys) -> None:
    """`--unimodal` could mean `--unimodal-assign` or a cross-modal flag: no parser takes prefixes of its flags."""
    data = ["--features", tiny_llp / "feats", "--annotations", tiny_llp, "--device", "cpu", "--out", tmp_path / "r"]
    for flag in (["--unimodal", "hard"], ["--no-cross"], ["--loss-w", "p_a=1"]):
        with pytest.raises(SystemExit) as exit_info:
            cli(capsys, "train", *data, *flag)
        assert exit_info.value.code == 2
        assert f"unrecognized arguments: {flag[0]}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(capsys, "sweep", "depth", "--out", tmp_path / "s", "--table", "--features", tiny_llp / "feats")
    assert "unrecognized arguments: --table" in capsys.readouterr().err
