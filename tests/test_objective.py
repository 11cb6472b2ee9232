"""The training objective (`avvp.objective`): named terms, per sample or per step, each with a weight; a term of weight
0 is skipped and trains exactly as without it; `loss.total` is the weighted sum; the weights are recorded and
compared on resume, as is every setting an older run folder did not record (missing means the default)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cli

import avvp
from avvp.errors import AvvpError
from avvp.models import ParseOutput, registry
from avvp.objective import Objective
from avvp.recipe import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MGN = {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 1}


def _output() -> tuple[ParseOutput, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    p_av, p_a, p_v = (torch.rand(4, 25, generator=generator) for _ in range(3))
    segments = torch.rand(4, 10, 25, generator=generator)
    logits = torch.randn(25, 25, generator=generator)
    labels = (torch.rand(4, 25, generator=generator) < 0.2).float()
    return ParseOutput(p_av, p_a, p_v, segments, segments, logits, 2 * logits), labels


def test_the_loss_is_the_weighted_sum_of_the_terms() -> None:
    output, labels = _output()
    plain = Objective("mgn", TrainConfig())
    terms = plain.terms_of(output, labels)
    assert plain.keys == ["p_av", "p_a", "p_v", "audio_tokens", "visual_tokens"]
    assert [terms[k].dim() for k in plain.keys] == [1, 1, 1, 0, 0]  # per sample [B], per step scalars

    weights = {"p_a": 2.0, "audio_tokens": 0.5, "p_v": 0.0}
    weighted = Objective("mgn", TrainConfig(loss_weights=weights))
    loss, totals = weighted(output, labels, global_size=8)  # a shard of 4 videos of a global batch of 8
    expected = (terms["p_av"] + 2 * terms["p_a"]).sum() / 8 + 0.5 * terms["audio_tokens"] + terms["visual_tokens"]
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert weighted.keys == ["p_av", "p_a", "audio_tokens", "visual_tokens"]  # p_v (weight 0) not computed
    # per-video sums, unweighted; a per-step term counts once per video
    expected_totals = [terms["p_av"].sum(), terms["p_a"].sum(), 4 * terms["audio_tokens"], 4 * terms["visual_tokens"]]
    torch.testing.assert_close(totals, torch.stack(expected_totals))
    means = {"p_av": 1.0, "p_a": 2.0, "audio_tokens": 3.0, "visual_tokens": 4.0}
    assert weighted.total(means) == 1.0 + 2 * 2.0 + 0.5 * 3.0 + 4.0


def test_default_weights_give_the_authors_loss_bit_for_bit() -> None:
    """Weights of 1 are not multiplied in: the sum is the authors' (p_av + p_a + p_v summed, then the tokens)."""
    output, labels = _output()
    terms = Objective("mgn", TrainConfig()).terms_of(output, labels)
    loss, _ = Objective("mgn", TrainConfig())(output, labels, global_size=4)
    authors = (terms["p_av"] + terms["p_a"] + terms["p_v"]).sum() / 4 * 1 + terms["audio_tokens"]
    assert torch.equal(loss, authors + terms["visual_tokens"])


def test_unknown_terms_and_all_zero_weights_are_refused(tiny_llp: Path, tmp_path: Path, capsys) -> None:
    data = ["--features", tiny_llp / "feats", "--annotations", tiny_llp, "--device", "cpu", "--epochs", "1"]
    status, _, err = cli(capsys, "train", "--model", "han", "--out", tmp_path / "a", *data, "--loss-weight",
                         "audio_tokens=1")  # fmt: skip
    assert status == 2 and err.count("\n") == 1
    assert "--loss-weight audio_tokens: not a loss term of HAN (its terms: p_av, p_a, p_v, contrastive)" in err
    assert not (tmp_path / "a").exists()
    status, _, err = cli(capsys, "train", "--out", tmp_path / "b", *data, "--loss-weight", "p_av=-1")
    assert status == 2 and "expected NAME=W with a weight W >= 0" in err
    zero = {"p_av": 0.0, "p_a": 0.0, "p_v": 0.0}
    with pytest.raises(AvvpError, match="every loss term has weight 0"):
        Objective("han", TrainConfig(model="han", loss_weights=zero))


@pytest.fixture
def mgn_without_token_terms(monkeypatch: pytest.MonkeyPatch) -> str:
    """MGN registered again under another name without its class-token terms (the same factory and config)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = registry.get_spec("mgn")
    registry._REGISTRY["mgn-plain"] = dataclasses.replace(spec, name="mgn-plain", loss_terms=())
    return "mgn-plain"


def _weights_after_training(tiny: Path, out: Path, model: str, **fields) -> dict[str, torch.Tensor]:
    config = TrainConfig(model=model, epochs=1, batch_size=8, model_overrides=TINY_MGN, precision="fp32", **fields)
    avvp.train(config, features=tiny / "feats", annotations=tiny, out_dir=out, progress=False)
    return torch.load(out / "last.pt", weights_only=True)["model"]


def test_a_term_of_weight_zero_trains_exactly_as_without_it(mgn_without_token_terms: str, tiny_llp: Path, tmp_path):
    zero = {"audio_tokens": 0.0, "visual_tokens": 0.0}
    skipped = _weights_after_training(tiny_llp, tmp_path / "zero", "mgn", loss_weights=zero)
    absent = _weights_after_training(tiny_llp, tmp_path / "absent", mgn_without_token_terms)
    weighted = _weights_after_training(tiny_llp, tmp_path / "default", "mgn")
    assert skipped.keys() == absent.keys()
    for key in skipped:
        assert torch.equal(skipped[key], absent[key]), key
    assert not torch.equal(skipped["audio_class_tokens"], weighted["audio_class_tokens"])  # the terms do act

    record = json.loads((tmp_path / "zero" / "config.json").read_text())
    assert record["train"]["loss_weights"] == zero
    line = json.loads((tmp_path / "zero" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(line["loss"]) == {"p_av", "p_a", "p_v", "total"}
    assert line["loss"]["total"] == pytest.approx(line["loss"]["p_av"] + line["loss"]["p_a"] + line["loss"]["p_v"])


def test_loss_total_is_the_weighted_sum(tiny_llp: Path, tmp_path: Path) -> None:
    _weights_after_training(tiny_llp, tmp_path / "run", "mgn", loss_weights={"p_v": 3.0, "visual_tokens": 0.25})
    loss = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    expected = loss["p_av"] + loss["p_a"] + 3 * loss["p_v"] + loss["audio_tokens"] + 0.25 * loss["visual_tokens"]
    assert math.isclose(loss["total"], expected, rel_tol=1e-12)


def test_resume_compares_settings_an_older_run_did_not_record(tiny_llp: Path, tmp_path: Path, capsys) -> None:
    """An older config.json lacks the settings added since (here loss_weights and cross_modal): missing means the
    default, so the same run resumes and another setting is refused."""
    run = tmp_path / "run"
    data = ["--features", tiny_llp / "feats", "--annotations", tiny_llp, "--device", "cpu", "--batch-size", "8"]
    train = ["train", "--model", "han", "--dim", "16", "--out", run, *data]
    assert cli(capsys, *train, "--epochs", "1")[0] == 0
    record = json.loads((run / "config.json").read_text())
    del record["train"]["loss_weights"], record["train"]["cross_modal"]
    (run / "config.json").write_text(json.dumps(record))
    status, _, err = cli(capsys, *train, "--epochs", "2", "--resume", "--loss-weight", "p_a=2")
    assert status == 2 and "loss_weights: {} -> {'p_a': 2.0}" in err
    status, _, err = cli(capsys, *train, "--epochs", "2", "--resume", "--no-cross-modal")
    assert status == 2 and "cross_modal: True -> False" in err
    status, _, err = cli(capsys, *train, "--epochs", "2", "--resume")
    assert status == 0, err
