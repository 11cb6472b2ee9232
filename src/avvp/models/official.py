"""The authors' checkpoint formats of MGN (`MGN_Net.pt`) and HAN (`MMIL_Net.pt`), as registry `OfficialFormat`s.

Key maps, recognition and config inference only (no torch import); `avvp.checkpoint` applies them. The authors' key
names and shapes are those of the released `MGN_Net.pt` and `MMIL_Net.pt` (the tests check them against lists of
those files' keys and shapes).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from avvp.models.registry import OfficialFormat

# (authors' key prefix, our key prefix), matched at the start of a key; the first match wins.
# A prefix without a trailing dot is a whole key.
MGN_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("audio_token", "audio_class_tokens"),
    ("visual_token", "visual_class_tokens"),
    ("fc_a.", "audio_proj."),
    ("fc_v.", "visual_fusion.res152_proj."),
    ("fc_st.", "visual_fusion.r2plus1d_proj."),
    ("fc_fusion.", "visual_fusion.fuse."),
    ("audio_cug.blocks.", "audio_cug.blocks."),
    ("audio_cug.han_encoder.", "audio_cug.visual_grouping."),
    ("audio_cug.grouping.", "audio_cug.class_grouping."),
    ("visual_cug.blocks.", "visual_cug.blocks."),
    ("visual_cug.grouping.", "visual_cug.class_grouping."),
    ("av_mcg.", "mcg."),
    ("fc_prob.", "av_head."),
    ("fc_prob_a.", "audio_head."),
    ("fc_prob_v.", "visual_head."),
    ("fc_cls.", "class_head."),
)
HAN_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("fc_prob.", "segment_head."),
    ("fc_frame_att.", "temporal_attention."),
    ("fc_av_att.", "modality_attention."),
    ("fc_a.", "audio_proj."),
    ("fc_v.", "visual_fusion.res152_proj."),
    ("fc_st.", "visual_fusion.r2plus1d_proj."),
    ("fc_fusion.", "visual_fusion.fuse."),
    ("hat_encoder.layers.0.self_attn.", "hybrid_attention.self_attn."),
    ("hat_encoder.layers.0.cm_attn.", "hybrid_attention.cross_attn."),
    ("hat_encoder.layers.0.linear1.", "hybrid_attention.ffn.fc1."),
    ("hat_encoder.layers.0.linear2.", "hybrid_attention.ffn.fc2."),
    ("hat_encoder.layers.0.norm1.", "hybrid_attention.norm1."),
    ("hat_encoder.layers.0.norm2.", "hybrid_attention.norm2."),
)
# Modules of the authors' HAN that its forward never uses: dropped on import.
HAN_UNUSED_PREFIXES = ("audio_encoder.", "visual_encoder.", "cmt_encoder.", "hat_encoder.norm1.", "hat_encoder.norm2.")
# The authors' HAN key order (their module order), used to order an export like their file.
HAN_KEY_ORDER = (
    ("fc_prob.", "fc_frame_att.", "fc_av_att.", "fc_a.", "fc_v.", "fc_st.", "fc_fusion.")
    + HAN_UNUSED_PREFIXES[:3]
    + ("hat_encoder.layers.", "hat_encoder.norm")
)


def _count_blocks(state_dict: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def recognise_mgn(keys: Collection[str]) -> str | None:
    if "audio_token" in keys or any(key.startswith("av_mcg.") for key in keys):
        return "official"
    return "avvp" if "audio_class_tokens" in keys else None


def recognise_han(keys: Collection[str]) -> str | None:
    if any(key.startswith("hat_encoder.") for key in keys):
        return "official"
    return "avvp" if any(key.startswith("hybrid_attention.") for key in keys) else None


def infer_mgn_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """MGN's width and depths from the shapes of a state dict in our key names."""
    return {
        "dim": int(state_dict["audio_class_tokens"].shape[1]),
        "depth_audio": _count_blocks(state_dict, "audio_cug.blocks."),
        "depth_visual": _count_blocks(state_dict, "visual_cug.blocks."),
        "depth_av": _count_blocks(state_dict, "mcg.blocks."),
    }


def infer_han_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """HAN's width and feed-forward width from the shapes of a state dict in our key names."""
    return {
        "dim": int(state_dict["audio_proj.weight"].shape[0]),
        "ff_dim": int(state_dict["hybrid_attention.ffn.fc1.weight"].shape[0]),
    }


def han_unused_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the modules the authors' MMIL_Net holds but its forward never uses, in their file order.

    They make the released checkpoint about twice the size of the model (the paper's 36 MB); import drops them
    and export writes placeholders so the authors' strict `load_state_dict` accepts our weights.
    """
    dim, ff = config.dim, config.ff_dim
    layer = {
        "self_attn.in_proj_weight": (3 * dim, dim),
        "self_attn.in_proj_bias": (3 * dim,),
        "self_attn.out_proj.weight": (dim, dim),
        "self_attn.out_proj.bias": (dim,),
        "linear1.weight": (ff, dim),
        "linear1.bias": (ff,),
        "linear2.weight": (dim, ff),
        "linear2.bias": (dim,),
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
    }
    norms = {"norm1.weight": (dim,), "norm1.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,)}
    shapes: dict[str, tuple[int, ...]] = {}
    for encoder in ("audio_encoder", "visual_encoder", "cmt_encoder"):
        shapes.update({f"{encoder}.layers.0.{key}": shape for key, shape in layer.items()})
    shapes.update({f"cmt_encoder.{key}": shape for key, shape in norms.items()})
    shapes.update({f"hat_encoder.{key}": shape for key, shape in norms.items()})
    return shapes


MGN_FORMAT = OfficialFormat(
    file_name="MGN_Net.pt",
    key_map=MGN_KEY_MAP,
    recognise=recognise_mgn,
    infer_config=infer_mgn_config,
    unrecorded=("unimodal_assign", "crossmodal_assign"),  # the weights cannot tell Softmax from Hard-Softmax
)
HAN_FORMAT = OfficialFormat(
    file_name="MMIL_Net.pt",
    key_map=HAN_KEY_MAP,
    recognise=recognise_han,
    infer_config=infer_han_config,
    dropped_prefixes=HAN_UNUSED_PREFIXES,
    unused_shapes=han_unused_shapes,
    key_order=HAN_KEY_ORDER,
)
