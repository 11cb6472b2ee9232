"""The authors' training steps reproduced: their small MGN, imported through our checkpoint loader, takes four Adam
steps through the step `avvp train` uses (`TrainStep`: `avvp.objective.Objective`, `make_optimizer`) and matches their loss
terms, gradients and weights (../shared/fixtures/mgn_official_train_small.npz, described in ../shared/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_scaled, npz_arrays, write_official_checkpoint

from avvp.checkpoint import load_model, official_state_dict
from avvp.distributed import DistributedContext
from avvp.recipe import TrainConfig
from avvp.steps import TrainStep, make_optimizer

STEPS = 4
BATCH = 3
# fixture loss term -> our loss key (the BCE of p_av, p_a, p_v and the two class-token cross-entropies)
LOSS_TERMS = {"video": "p_av", "audio": "p_a", "visual": "p_v", "audio_tokens": "audio_tokens"}
LOSS_TERMS["visual_tokens"] = "visual_tokens"
NOISE_GRADIENT = 1e-4  # |grad1| at or below this is rounding noise: Adam moves such elements by about +-lr
# Tolerances relative to the magnitude of the values compared (conftest.assert_close_scaled). Seen on the fixture:
# gradients off by at most 5.7e-6 x their scale on AVX-512 and 8.4e-6 on AVX2 (ONEDNN_MAX_CPU_ISA=AVX2
# ATEN_CPU_CAPABILITY=avx2), the informative elements by 7e-4 / 1.8e-3 of themselves, the weights after four steps by
# 6e-8 / 1.2e-7; the deliberate breaks it must catch are far above: visual smoothing shift 0.04 (gradients 2.3e-2 of
# their scale, an informative element 7.5x itself, weights 6.6e-4) and Adam eps 1e-6 (weights 2.7e-5).
LOSS_REL = 1e-5
GRADIENT_REL = 5e-5
INFORMATIVE_RTOL = 1e-2
WEIGHT_REL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def arrays(official_train_fixture: Path) -> dict[str, np.ndarray]:
    return npz_arrays(official_train_fixture)


@pytest.fixture(scope="module")
def trained(arrays: dict[str, np.ndarray], tmp_path_factory) -> dict:
    """Four steps taken as `avvp train` takes them, from the fixture's weights; what they produced."""
    path = write_official_checkpoint(arrays, tmp_path_factory.mktemp("official"))
    model, info = load_model(path)  # eval mode: no stochastic depth, no Gumbel noise, as the fixture's steps
    assert info["format"] == "official" and not model.training
    config = TrainConfig(model="mgn", lr=float(arrays["lr"]), precision="fp32")
    optimizer = make_optimizer(model, config.lr)
    stepper = TrainStep(model, optimizer, (), torch.zeros(0), config, torch.device("cpu"), "fp32", DistributedContext())
    # our parameter name -> the authors' key (the export keeps the state-dict order for MGN)
    official_key = dict(zip(model.state_dict(), official_state_dict(model)))
    losses, grad1 = [], {}
    for step in range(STEPS):
        batch = [torch.from_numpy(arrays[f"batch{step}/{name}"]).float() for name in ("audio", "res152", "r2plus1d")]
        labels = torch.from_numpy(arrays[f"batch{step}/labels"]).float()
        stepper.step(*batch, labels, BATCH)
        losses.append({key: value / BATCH for key, value in stepper.take_sums().items()})  # per-video sums -> means
        if step == 0:
            grad1 = {official_key[n]: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    after = {official_key[n]: p.detach().clone() for n, p in model.named_parameters()}
    return {"losses": losses, "grad1": grad1, "after": after}


def test_every_loss_term_at_every_step_matches_the_authors(arrays, trained):
    for term, ours in LOSS_TERMS.items():
        got = [step[ours] for step in trained["losses"]]
        assert_close_scaled(got, arrays[f"loss/{term}"], LOSS_REL, err_msg=term)
    totals = [sum(step.values()) for step in trained["losses"]]
    assert_close_scaled(totals, arrays["loss/total"], LOSS_REL)


def test_the_parameters_the_authors_list_get_gradients_and_the_others_only_noise(arrays, trained):
    """The fixture lists the parameters with a real gradient; ours without a listing get rounding noise only
    (e.g. the class head: at zero tokens its gradient is exactly zero in exact arithmetic)."""
    listed = {key[len("grad1/") :] for key in arrays if key.startswith("grad1/")}
    assert listed <= set(trained["grad1"])
    unlisted = {key: float(g.abs().max()) for key, g in trained["grad1"].items() if key not in listed}
    assert all(value <= NOISE_GRADIENT for value in unlisted.values()), unlisted


def test_first_step_gradients_match_the_authors(arrays, trained):
    for key in (key[len("grad1/") :] for key in arrays if key.startswith("grad1/")):
        expected = arrays[f"grad1/{key}"]
        grad = trained["grad1"][key].numpy()
        assert_close_scaled(grad, expected, GRADIENT_REL, err_msg=key)
        informative = np.abs(expected) > NOISE_GRADIENT
        np.testing.assert_allclose(grad[informative], expected[informative], atol=0, rtol=INFORMATIVE_RTOL, err_msg=key)


def test_weights_after_four_adam_steps_match_the_authors(arrays, trained):
    compared = 0
    for key in (key[len("after/") :] for key in arrays if key.startswith("after/")):
        weight = trained["after"][key]
        informative = np.abs(arrays[f"grad1/{key}"]) > NOISE_GRADIENT
        expected = arrays[f"after/{key}"][informative]
        assert_close_scaled(weight.numpy()[informative], expected, WEIGHT_REL, err_msg=key)
        compared += int(informative.sum())
    assert compared > 10_000  # most of the small model's elements carry a real gradient
