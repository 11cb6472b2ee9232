"""The training recipe under test: the loss against hand-computed numbers, bf16 that trains like fp32, the learning
rate per epoch, the best epoch on ties, scoring in fp32 inside `train`, the CLI defaults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avvp.cli import build_parser, main
from avvp.cli.train import config_from_args
from avvp.data.splits import load_split_data
from avvp.inference import predict
from avvp.models import ParseOutput, create_model
from avvp.objective import Objective
from avvp.precision import autocast
from avvp.recipe import TrainConfig
from avvp.training import score_split

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"mgn": {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 1}, "han": {"dim": 32, "ff_dim": 32}}
# BCE where the clamp acts: p = 0 with y = 1 is clamped to 1e-7, -log(1e-7) = 16.118; p = 1 with y = 0 to 1 - 1e-7,
# which float32 (the authors' precision as ours) rounds to 1 - 2**-23, so -log(2**-23) = 15.942.
CLAMPED_LOW = -math.log(float(np.float32(1e-7)))
CLAMPED_HIGH = -math.log(1.0 - float(np.float32(1 - 1e-7)))


def _output(p_av: torch.Tensor, p_a: torch.Tensor, p_v: torch.Tensor, token_logits: torch.Tensor) -> ParseOutput:
    segments = torch.zeros(len(p_av), 10, 25)
    return ParseOutput(p_av, p_a, p_v, segments, segments, token_logits, token_logits)


def test_losses_equal_hand_computed_values() -> None:
    labels = torch.zeros(2, 25)
    labels[0, 3] = 1.0  # video 0: class 3; video 1: nothing
    p_av = torch.full((2, 25), 0.2)
    p_a = torch.full((2, 25), 0.2)
    p_a[0, 3], p_a[1, 0] = 0.0, 1.0  # both clamped: a true class at 0, an absent one at 1
    p_v = torch.full((2, 25), 0.9)
    token_logits = torch.zeros(25, 25)
    token_logits[torch.arange(25), torch.arange(25)] = 2.0
    losses = Objective("mgn", TrainConfig()).terms_of(_output(p_av, p_a, p_v, token_logits), labels)

    absent_02 = -math.log(0.8)  # y = 0, p = 0.2
    present_02 = -math.log(0.2)
    expected_av = [(present_02 + 24 * absent_02) / 25, absent_02]
    expected_a = [(CLAMPED_LOW + 24 * absent_02) / 25, (CLAMPED_HIGH + 24 * absent_02) / 25]
    # p_v against the smoothed target 0.9 y + 0.05: 0.95 for the present class, 0.05 for the others
    v_present = -(0.95 * math.log(0.9) + 0.05 * math.log(0.1))
    v_absent = -(0.05 * math.log(0.9) + 0.95 * math.log(0.1))
    expected_v = [(v_present + 24 * v_absent) / 25, v_absent]
    token = math.log(math.exp(2.0) + 24) - 2.0  # -log softmax of the true class: 2 against 24 zeros

    np.testing.assert_allclose(losses["p_av"].numpy(), expected_av, rtol=1e-6)
    np.testing.assert_allclose(losses["p_a"].numpy(), expected_a, rtol=1e-6)
    np.testing.assert_allclose(losses["p_v"].numpy(), expected_v, rtol=1e-6)
    for key in ("audio_tokens", "visual_tokens"):
        assert losses[key].item() == pytest.approx(token, rel=1e-6)


@pytest.mark.parametrize("name, head, key", [("mgn", "av_head", "p_av"), ("han", "segment_head", "p_a")])
def test_bf16_training_gets_the_fp32_gradient_near_certainty(name: str, head: str, key: str) -> None:
    """With probabilities around 0.9997 (a logit of 8) a bf16 sigmoid gives exactly 1.0, the clamp then passes no
    gradient; computed in fp32 from the logits, bf16 training gets the fp32 gradient. (HAN's p_a, a softmax-weighted
    mean of segment probabilities, stays below 1; its p_av, a sum over both modalities, can exceed 1 by design.)"""
    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).eval()
    getattr(model, head).bias.data.fill_(8.0)
    inputs = (torch.randn(4, 10, 128), torch.rand(4, 10, 2048), torch.rand(4, 10, 512))
    labels = (torch.rand(4, 25) < 0.5).float()
    gradients = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with autocast(torch.device("cpu"), precision):
            output = model(*inputs)
        probabilities = getattr(output, key)
        assert probabilities.dtype == torch.float32
        assert bool((probabilities < 1).all()), precision
        Objective(name, TrainConfig()).terms_of(output, labels)[key].sum().backward()
        gradients[precision] = getattr(model, head).bias.grad.clone()
    assert gradients["fp32"].abs().min() > 0
    torch.testing.assert_close(gradients["bf16"], gradients["fp32"], rtol=0.05, atol=1e-4)


def _train(tiny: Path, out: Path, *extra: str) -> int:
    common = ["--features", str(tiny / "feats"), "--annotations", str(tiny), "--device", "cpu", "--batch-size", "8"]
    return main(["train", "--out", str(out), "--model", "han", "--dim", "32", *common, *extra])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_learning_rate_steps_per_epoch(tiny_llp: Path, tmp_path: Path) -> None:
    """StepLR(step 2, gamma 0.5) from 1e-3 over 5 epochs of 3 batches: halved every 2 epochs, not every 2 batches."""
    args = ["--epochs", "5", "--lr", "1e-3", "--lr-step", "2", "--lr-gamma", "0.5"]
    assert _train(tiny_llp, tmp_path / "run", *args) == 0
    lrs = [record["lr"] for record in _metrics(tmp_path / "run")]
    np.testing.assert_allclose(lrs, [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4], rtol=1e-12)


def test_best_epoch_on_ties_is_the_latest(tiny_llp: Path, tmp_path: Path) -> None:
    """At learning rate 0 the weights never change, so every epoch scores the same: the authors' `>=` keeps the
    last one."""
    assert _train(tiny_llp, tmp_path / "run", "--epochs", "3", "--lr", "0") == 0
    records = _metrics(tmp_path / "run")
    assert len({json.dumps(record["val"]) for record in records}) == 1
    best = json.loads((tmp_path / "run" / "best.json").read_text())["metadata"]
    assert best["epoch"] == 3
    assert json.loads((tmp_path / "run" / "test_scores.json").read_text())["best_epoch"] == 3


def test_test_scores_equal_evaluate_on_the_best_checkpoint_after_bf16_training(tiny_llp: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert _train(tiny_llp, run, "--epochs", "2", "--precision", "bf16") == 0
    args = ["evaluate", "--checkpoint", str(run / "best.safetensors"), "--features", str(tiny_llp / "feats")]
    assert main([*args, "--split", "test", "--annotations", str(tiny_llp), "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    recorded = json.loads((run / "test_scores.json").read_text())
    assert {key: recorded[key] for key in ("segment", "event")} == evaluated


def test_scoring_inside_train_predicts_in_fp32(tiny_llp: Path) -> None:
    torch.manual_seed(0)
    model = create_model("mgn", **TINY["mgn"]).eval()
    data = load_split_data(tiny_llp / "feats", tiny_llp, "val")
    _, predictions = score_split(model, data, batch_size=4, device=torch.device("cpu"))
    fp32 = predict(model, data.features, batch_size=4, precision="fp32")
    bf16 = predict(model, data.features, batch_size=4, precision="bf16")
    for key, values in predictions.items():
        np.testing.assert_array_equal(values, fp32[key])
    assert any(not np.array_equal(predictions[key], bf16[key]) for key in predictions)


def test_cli_defaults_are_the_recipe() -> None:
    args = build_parser().parse_args(["train", "--features", "f", "--annotations", "a", "--out", "o"])
    assert config_from_args(args) == TrainConfig()


def test_resume_help_names_every_setting_that_is_safe_to_change(capsys) -> None:
    from avvp.run_folder import SAFE_ON_RESUME

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    resume_help = text[text.index("--resume continue") :]
    for key in SAFE_ON_RESUME:
        assert "--" + key.replace("_", "-") in resume_help.replace("- ", "-"), key
