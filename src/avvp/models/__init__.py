"""The models: their one output type, MGN's and HAN's configurations and their registration.

The configurations and `ParseOutput` live here (no torch import at module level, so `import avvp.models`
stays light); the nn.Modules live in `mgn.py` and `han.py`, built from the blocks in `layers.py`; the registry that
every other module asks about a model is `registry.py`, and MGN and HAN register at the bottom of this file exactly
as a plugin would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from avvp.config import ConfigMixin
from avvp.errors import AvvpError
from avvp.models.registry import (
    LossTerm,
    config_to_dict,
    create_model,
    get_spec,
    list_models,
    make_config,
    register_model,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "HANConfig",
    "MGNConfig",
    "ParseOutput",
    "config_to_dict",
    "create_model",
    "list_models",
    "make_config",
    "register_model",
]

ASSIGN_KINDS = ("soft", "hard")


@dataclass
class ParseOutput:
    """What every model returns: probabilities at video and segment level, MGN's class-token logits and grouping
    maps, and `extras`, any tensors a model hands to its own loss terms.

    The video-level probabilities are float32 even under bf16 autocast (computed from float32 logits), so that
    the clamped BCE sees the same values as in fp32 training. Names as in the MGN paper.
    """

    p_av: Tensor  # [B, 25] audio-visual video-level probability (the weak-label prediction; gates the parse)
    p_a: Tensor  # [B, 25] audio video-level probability
    p_v: Tensor  # [B, 25] visual video-level probability
    audio: Tensor  # [B, 10, 25] audio segment-level probabilities
    visual: Tensor  # [B, 10, 25] visual segment-level probabilities
    audio_token_logits: Tensor | None = None  # MGN: [25, 25] class head on the audio class tokens
    visual_token_logits: Tensor | None = None  # MGN: [25, 25] class head on the visual class tokens
    audio_maps: Tensor | None = None  # MGN: [B, 25, 10] audio class-grouping map used for `audio`
    visual_maps: Tensor | None = None  # MGN: [B, 25, 10] visual class-grouping map used for `visual`
    extras: dict[str, Tensor] = field(default_factory=dict)  # any other tensors a model hands to its loss terms


def _check_positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AvvpError(f"{type(config).__name__}.{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class MGNConfig(ConfigMixin):
    """MGN (Mo & Tian, NeurIPS 2022); defaults are the paper's."""

    dim: int = 128  # model width D (8 attention heads, so a multiple of 8)
    depth_audio: int = 3  # SelfBlocks in the audio class-aware unimodal grouping (CUG)
    depth_visual: int = 3  # SelfBlocks in the visual CUG
    depth_av: int = 6  # SelfBlocks in the modality-aware cross-modal grouping (MCG)
    unimodal_assign: str = "soft"  # CUG class assignment: 'soft' or 'hard' (straight-through one-hot)
    crossmodal_assign: str = "soft"  # MCG assignment: 'soft' or 'hard'
    drop_path: float = 0.1  # stochastic depth rate of the SelfBlocks while training

    def __post_init__(self) -> None:
        _check_positive(self, "dim")
        if self.dim % 8:
            raise AvvpError(f"MGNConfig.dim must be a multiple of 8 (8 attention heads), not {self.dim}")
        for name in ("depth_audio", "depth_visual", "depth_av"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AvvpError(f"MGNConfig.{name} must be a non-negative integer, not {value!r}")
        for name in ("unimodal_assign", "crossmodal_assign"):
            if getattr(self, name) not in ASSIGN_KINDS:
                raise AvvpError(f"MGNConfig.{name} must be 'soft' or 'hard', not {getattr(self, name)!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise AvvpError(f"MGNConfig.drop_path must be in [0, 1), not {self.drop_path!r}")


@dataclass(frozen=True)
class HANConfig(ConfigMixin):
    """HAN (Tian et al., ECCV 2020): one hybrid attention layer; defaults are the paper's."""

    dim: int = 512  # model width
    num_heads: int = 1  # attention heads of the self- and cross-modal attention
    ff_dim: int = 512  # hidden width of the feed-forward layer
    dropout: float = 0.1  # dropout on attention weights, residual branches and feed-forward

    def __post_init__(self) -> None:
        _check_positive(self, "dim", "num_heads", "ff_dim")
        if self.dim % self.num_heads:
            raise AvvpError(f"HANConfig.dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise AvvpError(f"HANConfig.dropout must be in [0, 1), not {self.dropout!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (each tensor element counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


@dataclass(frozen=True)
class ModelSize:
    """Parameter count of a configuration; HAN also has the (larger) count of its released checkpoint."""

    parameters: int  # parameters the forward pass uses
    released_parameters: int | None = None  # HAN: the authors' checkpoint also holds modules the forward never uses

    @staticmethod
    def to_megabytes(parameters: int) -> float:
        """Size of float32 weights in MB (10^6 bytes), as the paper counts it."""
        return parameters * 4 / 1e6

    @property
    def megabytes(self) -> float:
        return self.to_megabytes(self.parameters)

    @property
    def released_megabytes(self) -> float | None:
        return None if self.released_parameters is None else self.to_megabytes(self.released_parameters)


def model_size(name: str, **overrides: Any) -> ModelSize:
    """Parameters of a configuration, counted on a model built on the meta device (no memory, no init work).

    A model whose authors' checkpoint holds modules its forward never uses (HAN: the paper's 36 MB counts them)
    also gets the count of that released checkpoint.
    """
    import math

    import torch

    with torch.device("meta"):
        parameters = count_parameters(create_model(name, **overrides))
    official = get_spec(name).official
    if official is None or official.unused_shapes is None:
        return ModelSize(parameters)
    unused = sum(math.prod(shape) for shape in official.unused_shapes(make_config(name, **overrides)).values())
    return ModelSize(parameters, released_parameters=parameters + unused)


# (label, model, overrides, size in the paper's Table 1 in MB)
_PAPER_TABLE: tuple[tuple[str, str, dict[str, Any], float], ...] = (
    ("HAN", "han", {}, 36.0),
    ("MGN (1,1,2)", "mgn", {"depth_audio": 1, "depth_visual": 1, "depth_av": 2}, 11.0),
    ("MGN (2,2,4)", "mgn", {"depth_audio": 2, "depth_visual": 2, "depth_av": 4}, 14.0),
    ("MGN (3,3,6)", "mgn", {"depth_audio": 3, "depth_visual": 3, "depth_av": 6}, 17.0),
    ("MGN (4,4,8)", "mgn", {"depth_audio": 4, "depth_visual": 4, "depth_av": 8}, 20.0),
    ("MGN (3,3,3)", "mgn", {"depth_audio": 3, "depth_visual": 3, "depth_av": 3}, 15.0),
    ("MGN (6,6,3)", "mgn", {"depth_audio": 6, "depth_visual": 6, "depth_av": 3}, 20.0),
)


def paper_table_configs() -> list[tuple[str, str, dict[str, Any]]]:
    """The configurations of the paper's Table 1 as (label, model name, config overrides), e.g. for a sweep."""
    return [(label, name, dict(overrides)) for label, name, overrides, _ in _PAPER_TABLE]


def model_size_table() -> list[tuple[str, str, dict[str, Any], ModelSize, float]]:
    """Every Table 1 configuration with its size counted on the built model, next to the size the paper reports.

    Returns:
        (label, model name, config overrides, `model_size`, the paper's size in MB) per configuration; the
        paper's HAN size is that of the released checkpoint (`ModelSize.released_megabytes`).
    """
    return [
        (label, name, dict(overrides), model_size(name, **overrides), paper_mb)
        for label, name, overrides, paper_mb in _PAPER_TABLE
    ]


# ------------------------------------------------------------------------------------------------ registration
# MGN and HAN register through the public `register_model`, as any plugin does; their factories are named by
# module path, so that looking them up imports no torch.
from avvp.models.official import HAN_FORMAT, MGN_FORMAT

register_model(
    "mgn",
    config=MGNConfig,
    factory="avvp.models.mgn:MGN",
    title="MGN",
    official=MGN_FORMAT,
    loss_terms=(
        LossTerm(
            "audio_tokens", "avvp.objective:audio_token_loss", per="step", about="CE of audio class token i as class i"
        ),
        LossTerm(
            "visual_tokens",
            "avvp.objective:visual_token_loss",
            per="step",
            about="CE of visual class token i as class i",
        ),
    ),
    validation_record="avvp.metrics:class_token_record",
    stackable=True,
    cross_modal_free=True,
    about="Multi-modal Grouping Network (Mo & Tian, NeurIPS 2022)",
)
register_model(
    "han",
    config=HANConfig,
    factory="avvp.models.han:HAN",
    title="HAN",
    official=HAN_FORMAT,
    loss_terms=(
        LossTerm(
            "contrastive",
            "avvp.objective:contrastive_loss",
            weight=0.0,
            about="MA's audio-visual contrastive term as JoMoLD trains it (weight 0: off, the HAN recipe)",
        ),
    ),
    # Not stackable: torch's nn.MultiheadAttention under vmap copies each run's projection weights once per
    # segment, which made a stacked HAN step 3x slower on CPU (bench/README.md, "Sweeps").
    stackable=False,
    cross_modal_free=True,
    about="Hybrid Attention Network (Tian et al., ECCV 2020)",
)
