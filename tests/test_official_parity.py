"""Parity with the authors' code: their small MGN, imported through our checkpoint loader, gives their outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_scaled, npz_arrays, write_official_checkpoint

from avvp.checkpoint import load_model
from avvp.models.layers import SelfBlock

# fixture key output/<key> -> our ParseOutput field
# Outputs equal up to float32 rounding relative to their magnitude (conftest.assert_close_scaled): differences of
# ~5e-7 seen on AVX-512 and on AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2); a wrong assignment kind is
# off by more than 1e-3 (the last test).
OUTPUT_REL = 1e-5
OUTPUTS = {
    "video": "p_av",
    "audio_video": "p_a",
    "visual_video": "p_v",
    "audio": "audio",
    "visual": "visual",
    "audio_token_logits": "audio_token_logits",
    "visual_token_logits": "visual_token_logits",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture_arrays(official_fixture: Path) -> dict[str, np.ndarray]:
    return npz_arrays(official_fixture)


@pytest.fixture(scope="module")
def official_checkpoint(fixture_arrays: dict[str, np.ndarray], tmp_path_factory) -> Path:
    """The fixture's weights written as the authors' checkpoint file."""
    return write_official_checkpoint(fixture_arrays, tmp_path_factory.mktemp("official"))


def _inputs(arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(arrays[f"input/{name}"]) for name in ("audio", "res152", "r2plus1d"))


def test_imported_authors_mgn_reproduces_their_outputs(fixture_arrays, official_checkpoint):
    model, info = load_model(official_checkpoint)
    assert info["format"] == "official"
    # The configuration of ../shared/README.md (dim 32, CUG depths 1/2, MCG depth 1, Softmax/Softmax); the authors'
    # checkpoint holds no stochastic depth rate, so it is the recipe's 0.1 (the authors' default for every SelfBlock).
    expected_config = {
        "dim": 32,
        "depth_audio": 1,
        "depth_visual": 2,
        "depth_av": 1,
        "unimodal_assign": "soft",
        "crossmodal_assign": "soft",
        "drop_path": 0.1,
    }
    assert info["config"] == model.config.to_dict() == expected_config
    assert {block.drop_path.rate for block in model.modules() if isinstance(block, SelfBlock)} == {0.1}
    assert not model.training
    with torch.no_grad():
        output = model(*_inputs(fixture_arrays))
    for name, field in OUTPUTS.items():
        expected = fixture_arrays[f"output/{name}"]
        assert_close_scaled(getattr(output, field).numpy(), expected, OUTPUT_REL, err_msg=name)


def test_per_second_res152_input_gives_the_same_outputs(fixture_arrays, official_checkpoint):
    """Features averaged per second before the model ([B, 10, 2048]) are the same model input."""
    model, _ = load_model(official_checkpoint)
    audio, res152, r2plus1d = _inputs(fixture_arrays)
    with torch.no_grad():
        output = model(audio, res152.reshape(res152.shape[0], 10, 8, -1).mean(dim=2), r2plus1d)
    for name, field in OUTPUTS.items():
        assert_close_scaled(getattr(output, field).numpy(), fixture_arrays[f"output/{name}"], OUTPUT_REL, err_msg=name)


def test_the_fixture_tells_the_assignment_kinds_apart(fixture_arrays, official_checkpoint):
    """Guard against a fixture too weak to check anything: the wrong assignment kind changes the outputs."""
    model, _ = load_model(official_checkpoint, unimodal_assign="hard")
    with torch.no_grad():
        output = model(*_inputs(fixture_arrays))
    assert np.abs(output.audio.numpy() - fixture_arrays["output/audio"]).max() > 1e-3
