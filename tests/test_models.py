"""MGN and HAN: shapes, gradients, determinism, input forms, configs and the parameter counts of the papers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from avvp.cli import main
from avvp.errors import AvvpError
from avvp.models import (
    HANConfig,
    MGNConfig,
    ModelSize,
    ParseOutput,
    count_parameters,
    create_model,
    list_models,
    model_size_table,
    paper_table_configs,
)
from avvp.models.layers import Assignment

# Small models for the behaviour tests; every combination of the MGN assignment kinds.
SMALL = {
    "mgn-soft-soft": ("mgn", {"dim": 16, "depth_audio": 1, "depth_visual": 2, "depth_av": 1}),
    "mgn-hard-hard": (
        "mgn",
        {
            "dim": 16,
            "depth_audio": 1,
            "depth_visual": 1,
            "depth_av": 2,
            "unimodal_assign": "hard",
            "crossmodal_assign": "hard",
        },
    ),
    "mgn-soft-hard": (
        "mgn",
        {"dim": 16, "depth_audio": 1, "depth_visual": 1, "depth_av": 1, "crossmodal_assign": "hard"},
    ),
    "mgn-hard-soft": (
        "mgn",
        {"dim": 16, "depth_audio": 2, "depth_visual": 1, "depth_av": 1, "unimodal_assign": "hard"},
    ),
    "han": ("han", {"dim": 32, "ff_dim": 24, "num_heads": 2}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_inputs(batch: int = 3, seed: int = 0, frames: int = 80) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, 10, 128, generator=generator)
    res152 = torch.rand(batch, frames, 2048, generator=generator)
    r2plus1d = torch.rand(batch, 10, 512, generator=generator)
    return audio, res152, r2plus1d


def build(key: str) -> torch.nn.Module:
    torch.manual_seed(0)
    name, overrides = SMALL[key]
    return create_model(name, **overrides)


@pytest.mark.parametrize("key", SMALL)
def test_output_shapes_and_values(key):
    model = build(key).eval()
    with torch.no_grad():
        output = model(*make_inputs(batch=3))
    assert isinstance(output, ParseOutput)
    for name in ("p_av", "p_a", "p_v"):
        assert getattr(output, name).shape == (3, 25)
    for name in ("audio", "visual"):
        assert getattr(output, name).shape == (3, 10, 25)
    for name in ("p_av", "p_a", "p_v", "audio", "visual"):
        values = getattr(output, name)
        assert torch.isfinite(values).all(), name
        assert (values >= 0).all(), name
    for name in ("p_av", "p_a", "p_v"):
        assert (getattr(output, name) <= 1).all(), name
    if model.name == "mgn":
        assert output.audio_token_logits.shape == output.visual_token_logits.shape == (25, 25)
        assert output.audio_maps.shape == output.visual_maps.shape == (3, 25, 10)
    else:
        assert output.audio_token_logits is None and output.audio_maps is None
        assert (output.audio <= 1).all() and (output.visual <= 1).all()


def _segment_and_video_probs(key: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(segment probabilities [B, T, 25], video-level probabilities [B, 25]) of the audio and the visual stream."""
    with torch.no_grad():
        output = build(key).eval()(*make_inputs())
    return [(output.audio, output.p_a), (output.visual, output.p_v)]


@pytest.mark.parametrize("key", ["mgn-hard-hard", "mgn-hard-soft"])
def test_mgn_hard_segment_probs_give_each_segment_one_class_at_its_video_probability(key):
    """Spec 3.7 with a hard map (one-hot over the classes per segment, spec 3 Assignment): each segment holds one
    class, with exactly that class's video-level probability p_a (audio) or p_v (visual), and zeros elsewhere."""
    for segment_probs, video_probs in _segment_and_video_probs(key):
        assert ((segment_probs > 0).sum(dim=2) == 1).all()
        chosen = segment_probs.max(dim=2)  # [B, T] value and class of the one positive class per segment
        torch.testing.assert_close(chosen.values, torch.gather(video_probs, 1, chosen.indices))


@pytest.mark.parametrize("key", ["mgn-soft-soft", "mgn-soft-hard"])
def test_mgn_soft_segment_probs_sum_to_eleven_times_the_video_probability(key):
    """Spec 3.7 with the soft map 1 + softmax over the 10 segments: per class the map lies in (1, 2] and sums to
    10 + 1 over the segments, so p <= P[t] <= 2p and sum_t P[t] = 11p, p = p_a (audio) or p_v (visual)."""
    for segment_probs, video_probs in _segment_and_video_probs(key):
        torch.testing.assert_close(segment_probs.sum(dim=1), 11.0 * video_probs)
        assert (segment_probs >= video_probs.unsqueeze(1)).all()
        assert (segment_probs <= 2.0 * video_probs.unsqueeze(1)).all()


def test_mgn_maps_follow_the_assignment_kind():
    """Hard maps are one-hot over the classes per segment; soft maps are 1 + a distribution over segments."""
    with torch.no_grad():
        hard = build("mgn-hard-hard").eval()(*make_inputs())
        soft = build("mgn-soft-soft").eval()(*make_inputs())
    torch.testing.assert_close(hard.audio_maps.sum(dim=1), torch.ones(3, 10))
    assert set(hard.visual_maps.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(soft.audio_maps.sum(dim=2), torch.full((3, 25), 1.0 + 10.0))
    assert (soft.audio_maps > 1).all()


@pytest.mark.parametrize("batch", [1, 2])
def test_single_video_batches_keep_their_batch_axis(batch):
    for key in ("mgn-soft-soft", "han"):
        with torch.no_grad():
            output = build(key).eval()(*make_inputs(batch=batch))
        assert output.p_av.shape == (batch, 25) and output.audio.shape == (batch, 10, 25)


@pytest.mark.parametrize("key", SMALL)
def test_every_parameter_gets_a_gradient_in_training(key):
    model = build(key).train()
    if model.name == "mgn":
        # Class tokens start at zero, which zeroes the class head's weight gradient: move them as training would.
        with torch.no_grad():
            model.audio_class_tokens.normal_(std=0.02)
            model.visual_class_tokens.normal_(std=0.02)
    torch.manual_seed(1)
    output = model(*make_inputs(batch=4))
    loss = sum(getattr(output, name).mean() for name in ("p_av", "p_a", "p_v", "audio", "visual"))
    if output.audio_token_logits is not None:
        targets = torch.arange(25)
        loss = loss + F.cross_entropy(output.audio_token_logits, targets)
        loss = loss + F.cross_entropy(output.visual_token_logits, targets)
    loss.backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without, f"no gradient: {without[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("key", SMALL)
def test_eval_mode_is_deterministic(key):
    model = build(key).eval()
    inputs = make_inputs()
    with torch.no_grad():
        first, second = model(*inputs), model(*inputs)
    for name in ("p_av", "p_a", "p_v", "audio", "visual"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_same_seed_builds_the_same_model():
    first, second = build("mgn-soft-soft"), build("mgn-soft-soft")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_hard_assignment_samples_gumbel_noise_in_training_and_takes_the_argmax_in_eval():
    """Hand-made logits: identity q/k projections, groups e_0, e_1, e_2 and segment l = 2 * e_(l mod 3), so that the
    logits are 1 (= 2 * dim^-0.5) for group l mod 3 and 0 for the others."""
    torch.manual_seed(0)
    assign = Assignment(4, "hard")
    with torch.no_grad():
        for proj in (assign.q_proj, assign.k_proj):
            proj.weight.copy_(torch.eye(4))
            proj.bias.zero_()
    groups = torch.eye(3, 4).unsqueeze(0)  # [1, 3, 4]
    targets = torch.arange(30) % 3  # [30]
    segments = 2.0 * F.one_hot(targets, 4).float().unsqueeze(0)  # [1, 30, 4]
    argmax = F.one_hot(targets, 3).T.float().unsqueeze(0)  # [1, 3, 30]

    def hard_map(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return assign(groups, segments)[1]["hard"]

    assign.eval()
    assert torch.equal(hard_map(0), argmax) and torch.equal(hard_map(1), argmax)  # no noise: the argmax, any seed
    assign.train()
    first, again, second = hard_map(0), hard_map(0), hard_map(1)
    assert torch.equal(first, again)  # the randomness is the seeded noise
    assert not torch.equal(first, second)  # a new sample per seed...
    assert not torch.equal(first, argmax) and not torch.equal(second, argmax)  # ...that moves some segments
    for sample in (first, second):
        assert torch.equal(sample.sum(dim=1), torch.ones(1, 30))  # still one group per segment (hard=True)
        assert set(sample.unique().tolist()) == {0.0, 1.0}

    # In the whole model (stochastic depth off, so Gumbel noise is the only randomness): seed-dependent maps only
    # while training.
    torch.manual_seed(0)
    model = create_model("mgn", dim=16, depth_audio=1, depth_visual=1, depth_av=1, unimodal_assign="hard",
                         crossmodal_assign="hard", drop_path=0.0)  # fmt: skip
    inputs = make_inputs(batch=4)
    maps = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for seed in (0, 1):
            torch.manual_seed(seed)
            with torch.no_grad():
                maps[mode, seed] = model(*inputs).audio_maps
    assert not torch.equal(maps["train", 0], maps["train", 1])
    assert torch.equal(maps["eval", 0], maps["eval", 1])


@pytest.mark.parametrize("key", ["mgn-soft-soft", "mgn-hard-hard", "han"])
def test_per_second_res152_equals_80_frames(key):
    """The linear layer commutes with the mean: pooled [B, 10, 2048] input is the same model input."""
    model = build(key).eval()
    audio, res152, r2plus1d = make_inputs()
    pooled = res152.reshape(3, 10, 8, 2048).mean(dim=2)
    with torch.no_grad():
        from_frames, from_pooled = model(audio, res152, r2plus1d), model(audio, pooled, r2plus1d)
    for name in ("p_av", "audio", "visual"):
        torch.testing.assert_close(getattr(from_frames, name), getattr(from_pooled, name), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "shapes, fragment",
    [
        (((2, 10, 64), (2, 80, 2048), (2, 10, 512)), "audio features"),
        (((2, 10, 128), (2, 40, 2048), (2, 10, 512)), "res152 features"),
        (((2, 10, 128), (2, 80, 1024), (2, 10, 512)), "res152 features"),
        (((2, 10, 128), (2, 80, 2048), (2, 10, 256)), "r2plus1d features"),
        (((2, 10, 128), (2, 80, 2048), (3, 10, 512)), "r2plus1d features"),
    ],
)
def test_wrong_feature_shapes_are_clear_errors(shapes, fragment):
    model = build("mgn-soft-soft").eval()
    with pytest.raises(AvvpError, match=fragment):
        model(*(torch.zeros(shape) for shape in shapes))


def test_configs_resolve_reject_unknown_keys_and_round_trip():
    model = create_model("mgn", dim=16, depth_av=1, unimodal_assign="hard")
    assert model.name == "mgn"
    assert model.config == MGNConfig(dim=16, depth_av=1, unimodal_assign="hard")
    assert MGNConfig.from_dict(model.config.to_dict()) == model.config
    assert json.loads(json.dumps(model.config.to_dict())) == model.config.to_dict()
    assert HANConfig.from_dict(HANConfig().to_dict()) == HANConfig()
    assert create_model("han", dim=32).config == HANConfig(dim=32)
    with pytest.raises(AvvpError, match="unknown MGNConfig key"):
        MGNConfig.from_dict({"dim": 16, "depth": 3})
    with pytest.raises(AvvpError, match="unknown HANConfig key"):
        create_model("han", depth_av=2)
    with pytest.raises(AvvpError, match="'soft' or 'hard'"):
        create_model("mgn", crossmodal_assign="gumbel")
    with pytest.raises(AvvpError, match="multiple of 8"):
        create_model("mgn", dim=20)
    with pytest.raises(AvvpError, match="unknown model"):
        create_model("vit")
    assert list_models()[:2] == ["mgn", "han"]


def test_mgn_initialisation():
    model = create_model("mgn", dim=64, depth_audio=1, depth_visual=1, depth_av=1)
    assert torch.count_nonzero(model.audio_class_tokens) == 0 and torch.count_nonzero(model.visual_class_tokens) == 0
    weight = model.visual_fusion.res152_proj.weight
    assert 0.018 < weight.std() < 0.022
    assert torch.count_nonzero(model.visual_fusion.res152_proj.bias) == 0
    assert torch.count_nonzero(model.mcg.grouping.assign.q_proj.bias) == 0
    assert torch.equal(model.audio_cug.blocks[0].norm1.weight, torch.ones(64))


# The authors' parameter counts (the released checkpoints; sizes as in the MGN supplement's Table 1).
MGN_COUNTS = {
    (1, 1, 2): 2_779_889,
    (2, 2, 4): 3_572_977,
    (3, 3, 6): 4_366_065,
    (4, 4, 8): 5_159_153,
    (3, 3, 3): 3_771_249,
    (6, 6, 3): 4_960_881,
}


@pytest.mark.parametrize("depths", MGN_COUNTS)
def test_mgn_parameter_counts_match_the_authors(depths):
    with torch.device("meta"):
        model = create_model("mgn", depth_audio=depths[0], depth_visual=depths[1], depth_av=depths[2])
    assert count_parameters(model) == MGN_COUNTS[depths]


def test_han_parameter_count_matches_the_authors():
    with torch.device("meta"):
        assert count_parameters(create_model("han")) == 4_569_675


def test_size_table_rows():
    sizes = {label: (name, size, paper_mb) for label, name, _, size, paper_mb in model_size_table()}
    _, han, han_paper_mb = sizes["HAN"]
    assert han.parameters == 4_569_675 and han.released_parameters == 9_307_723
    assert f"{han.released_megabytes:.1f}" == "37.2" and f"{han.megabytes:.1f}" == "18.3"
    assert han_paper_mb == 36.0
    mgn = {label: size for label, (name, size, _) in sizes.items() if name == "mgn"}
    for depths, count in MGN_COUNTS.items():
        assert mgn[f"MGN ({depths[0]},{depths[1]},{depths[2]})"] == ModelSize(count)
    assert f"{mgn['MGN (3,3,6)'].megabytes:.1f}" == "17.5"
    labels = [label for label, _, _ in paper_table_configs()]
    assert labels == ["HAN"] + [f"MGN ({a},{v},{av})" for a, v, av in MGN_COUNTS]


def test_models_command_prints_the_table(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("MGN (3,3,6)" in line and "4,366,065" in line and "17.5" in line for line in lines)
    assert any(line.startswith("HAN") and "9,307,723" in line and "37.2" in line for line in lines)
    assert any(line.startswith("HAN") and "4,569,675" in line and "18.3" in line for line in lines)
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = listing["paper_table_1"]
    assert {row["label"]: row["parameters"] for row in rows if row["model"] == "mgn"}["MGN (4,4,8)"] == 5_159_153
    registered = {row["name"]: row for row in listing["registered"]}
    assert list(registered)[:2] == ["mgn", "han"] and registered["mgn"]["parameters"] == 4_366_065
    assert registered["mgn"]["loss_terms"] == {"p_av": 1, "p_a": 1, "p_v": 1, "audio_tokens": 1, "visual_tokens": 1}
    assert registered["han"]["authors_format"] == "MMIL_Net.pt" and not registered["han"]["stackable"]


def test_han_draws_its_dropout_in_the_authors_order():
    """The hybrid attention layer in training mode: cross-modal attention, self-attention, then their dropouts, in
    the order of the authors' code, so that the same seed gives the same training (a reordering changes every run)."""
    torch.manual_seed(0)
    layer = create_model("han", dim=32, ff_dim=32).hybrid_attention.train()
    query, other = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    torch.manual_seed(1)
    ours = layer(query, other)
    torch.manual_seed(1)
    cross, _ = layer.cross_attn(query, other, other, need_weights=False)
    attended, _ = layer.self_attn(query, query, query, need_weights=False)
    mixed = layer.norm1(query + layer.drop_cross(cross) + layer.drop_self(attended))
    assert torch.equal(ours, layer.norm2(mixed + layer.ffn(mixed)))
