"""bf16 autocast agrees with fp32: probabilities within a stated tolerance, parses nearly identical.

Stated tolerance (README, `--precision` help): bf16 probabilities within 0.05 of fp32 (mean difference under 0.01), and
at most 2 % of the parse decisions flip, which moves the official scores by at most a few tenths of a point on
LLP-sized splits. CPU autocast exercises the same code path as CUDA's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avvp.data.annotations import load_split
from avvp.data.features import load_features
from avvp.inference import predict
from avvp.metrics import parse_predictions
from avvp.models import create_model


@pytest.mark.parametrize("name", ["mgn", "han"])
def test_bf16_matches_fp32(tiny_llp: Path, name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name) if name == "mgn" else create_model(name, dim=128)
    split = load_split(tiny_llp, "train")
    features = load_features(tiny_llp / "feats", split.video_ids, pooled=True)
    exact = predict(model, features, precision="fp32")
    approx = predict(model, features, precision="bf16")
    for key in ("video", "audio_video", "visual_video", "audio", "visual"):
        assert approx[key].dtype == np.float32
        difference = np.abs(approx[key] - exact[key])
        assert difference.max() < 0.05, key
        assert difference.mean() < 0.01, key
    parses = [parse_predictions(out["audio"], out["visual"], out["video"]) for out in (exact, approx)]
    for fp32_parse, bf16_parse in zip(parses[0], parses[1]):
        assert np.mean(fp32_parse != bf16_parse) <= 0.02
