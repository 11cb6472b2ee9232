"""bench/mgn_variants.py: the Table 2 experiment's MGN variant is MGN with one assignment's kind switched, found
as a plugin, and starts from MGN's own weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def variants():
    """The bench module, registered for this module's tests only (other tests list the registered models)."""
    from avvp.models import registry

    sys.path.insert(0, str(BENCH))
    try:
        import mgn_variants

        yield mgn_variants
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("mgn_variants", None)
        registry._REGISTRY.pop("mgn-same-kind", None)


def _build(name: str, seed: int = 0, **overrides):
    from avvp.models.registry import create_model

    torch.manual_seed(seed)
    return create_model(name, dim=32, depth_audio=1, depth_visual=1, depth_av=1, **overrides).eval()


@pytest.mark.parametrize("unimodal", ["hard", "soft"])
def test_only_the_audio_visual_grouping_kind_changes(variants, unimodal: str) -> None:
    mgn = _build("mgn", unimodal_assign=unimodal)
    variant = _build("mgn-same-kind", unimodal_assign=unimodal)
    opposite = "soft" if unimodal == "hard" else "hard"
    assert mgn.audio_cug.visual_grouping.assign.kind == opposite  # the authors' code
    assert variant.audio_cug.visual_grouping.assign.kind == unimodal
    assert variant.audio_cug.class_grouping.assign.kind == unimodal
    assert variant.visual_cug.class_grouping.assign.kind == unimodal
    mine, theirs = variant.state_dict(), mgn.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)  # the same initial weights
    torch.manual_seed(1)
    inputs = (torch.randn(2, 10, 128), torch.randn(2, 80, 2048), torch.randn(2, 10, 512))
    with torch.no_grad():
        assert not torch.allclose(variant(*inputs).p_a, mgn(*inputs).p_a)  # the switch is in the forward
        assert torch.equal(variant(*inputs).p_v, mgn(*inputs).p_v)  # the visual stream is untouched


def test_found_through_the_plugin_variable() -> None:
    import os
    import subprocess

    env = os.environ | {"PYTHONPATH": str(BENCH), "AVVP_PLUGINS": "mgn_variants"}
    done = subprocess.run(
        [sys.executable, "-m", "avvp", "models"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "mgn-same-kind" in done.stdout
