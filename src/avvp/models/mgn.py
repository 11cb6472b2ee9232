"""MGN: Multi-modal Grouping Network (Mo & Tian, NeurIPS 2022), as the authors' released code computes it.

Class tokens group the segments of each modality (class-aware unimodal grouping, CUG), then the audio class
tokens group with the visual ones (modality-aware cross-modal grouping, MCG). Segment-level predictions come
from the class-grouping maps, weighted by the video-level probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avvp.data.classes import NUM_CLASSES, NUM_SEGMENTS
from avvp.models import MGNConfig, ParseOutput
from avvp.models.layers import GroupingBlock, SelfBlock, VisualFusion, check_inputs, init_weights

NUM_HEADS = 8


def _opposite(kind: str) -> str:
    return "hard" if kind == "soft" else "soft"


class ClassAwareGrouping(nn.Module):
    """CUG of one modality: SelfBlocks over segments plus class tokens, then the tokens group the segments.

    The audio CUG (`with_visual=True`) first lets the audio segments group with the 10 fused visual segments as
    groups; that block uses the assignment kind OPPOSITE to the unimodal one, as the authors' code does.
    """

    def __init__(self, config: MGNConfig, depth: int, with_visual: bool) -> None:
        super().__init__()
        dim = config.dim
        self.blocks = nn.ModuleList(SelfBlock(dim, NUM_HEADS, config.drop_path) for _ in range(depth))
        self.visual_grouping = (
            GroupingBlock(dim, NUM_SEGMENTS, NUM_SEGMENTS, _opposite(config.unimodal_assign), NUM_HEADS)
            if with_visual
            else None
        )
        self.class_grouping = GroupingBlock(dim, NUM_CLASSES, NUM_CLASSES, config.unimodal_assign, NUM_HEADS)

    def forward(
        self, segments: Tensor, class_tokens: Tensor, visual_segments: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """segments [B, T, C], class_tokens [25, C] (, visual_segments [B, T, C]) -> ([B, 25, C], maps [B, 25, T])."""
        batch, num_segments = segments.shape[:2]
        tokens = torch.cat([segments, class_tokens.expand(batch, -1, -1)], dim=1)  # [B, T + 25, C]
        for block in self.blocks:
            tokens = block(tokens)
        segments, class_tokens = tokens[:, :num_segments], tokens[:, num_segments:]
        if self.visual_grouping is not None and visual_segments is not None:  # None: the cross-modal-free form
            segments, _ = self.visual_grouping(segments, visual_segments)  # [B, T, C]
        return self.class_grouping(segments, class_tokens)


class CrossModalGrouping(nn.Module):
    """MCG: SelfBlocks over the audio and visual class tokens together, then the visual half groups the audio half."""

    def __init__(self, config: MGNConfig) -> None:
        super().__init__()
        dim = config.dim
        self.blocks = nn.ModuleList(SelfBlock(dim, NUM_HEADS, config.drop_path) for _ in range(config.depth_av))
        self.grouping = GroupingBlock(dim, NUM_CLASSES, NUM_CLASSES, config.crossmodal_assign, NUM_HEADS)

    def forward(self, audio_tokens: Tensor, visual_tokens: Tensor) -> Tensor:
        """audio_tokens, visual_tokens [B, 25, C] -> audio-visual class tokens [B, 25, C]."""
        tokens = torch.cat([audio_tokens, visual_tokens], dim=1)  # [B, 50, C]
        for block in self.blocks:
            tokens = block(tokens)
        grouped, _ = self.grouping(tokens[:, :NUM_CLASSES], tokens[:, NUM_CLASSES:])
        return grouped


class MGN(nn.Module):
    """MGN; `forward(audio, res152, r2plus1d)` returns a `ParseOutput`.

    Its cross-modal-free form (`cross_modal=False`) skips the audio CUG's grouping with the visual segments, the one
    place where one modality enters the other's class tokens: p_a, the audio segments and their maps then see the
    audio alone, p_v and the visual ones the visual alone. The MCG still fuses both into p_av, whose job that is
    (as HAN's modality attention does in its cross-modal-free form).
    """

    def __init__(self, config: MGNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MGNConfig()
        dim = config.dim
        self.audio_class_tokens = nn.Parameter(torch.zeros(NUM_CLASSES, dim))  # [25, C]
        self.visual_class_tokens = nn.Parameter(torch.zeros(NUM_CLASSES, dim))  # [25, C]
        self.audio_proj = nn.Linear(128, dim)
        self.visual_fusion = VisualFusion(dim)
        self.audio_cug = ClassAwareGrouping(config, config.depth_audio, with_visual=True)
        self.visual_cug = ClassAwareGrouping(config, config.depth_visual, with_visual=False)
        self.mcg = CrossModalGrouping(config)
        self.av_head = nn.Linear(dim, 1)  # audio-visual class tokens -> p_av
        self.audio_head = nn.Linear(dim, 1)  # audio class tokens -> p_a
        self.visual_head = nn.Linear(dim, 1)  # visual class tokens -> p_v
        self.class_head = nn.Linear(dim, NUM_CLASSES)  # class token -> its class (token loss)
        self.apply(init_weights)

    def forward(self, audio: Tensor, res152: Tensor, r2plus1d: Tensor, cross_modal: bool = True) -> ParseOutput:
        """audio [B, 10, 128], res152 [B, 80 or 10, 2048], r2plus1d [B, 10, 512] -> probabilities."""
        check_inputs(audio, res152, r2plus1d)
        audio_segments = self.audio_proj(audio)  # [B, T, C]
        visual_segments = self.visual_fusion(res152, r2plus1d)  # [B, T, C]

        visual_tokens, visual_maps = self.visual_cug(visual_segments, self.visual_class_tokens)  # [B, 25, C]
        audio_tokens, audio_maps = self.audio_cug(
            audio_segments, self.audio_class_tokens, visual_segments if cross_modal else None
        )
        av_tokens = self.mcg(audio_tokens, visual_tokens)  # [B, 25, C]

        # Video level, in float32 from the logits (under bf16 autocast a bf16 sigmoid rounds p > ~0.998 to 1).
        p_av = torch.sigmoid(self.av_head(av_tokens).squeeze(-1).float())  # [B, 25]
        p_a = torch.sigmoid(self.audio_head(audio_tokens).squeeze(-1).float())  # [B, 25]
        p_v = torch.sigmoid(self.visual_head(visual_tokens).squeeze(-1).float())  # [B, 25]

        # Segment level: video-level probability times the class-grouping map of the unimodal kind.
        audio_map = audio_maps[self.config.unimodal_assign]  # [B, 25, T]
        visual_map = visual_maps[self.config.unimodal_assign]  # [B, 25, T]
        audio_segment_probs = (p_a.unsqueeze(-1) * audio_map).transpose(1, 2)  # [B, T, 25]
        visual_segment_probs = (p_v.unsqueeze(-1) * visual_map).transpose(1, 2)  # [B, T, 25]

        return ParseOutput(
            p_av=p_av,
            p_a=p_a,
            p_v=p_v,
            audio=audio_segment_probs,
            visual=visual_segment_probs,
            audio_token_logits=self.class_head(self.audio_class_tokens),  # [25, 25]
            visual_token_logits=self.class_head(self.visual_class_tokens),  # [25, 25]
            audio_maps=audio_map,
            visual_maps=visual_map,
        )
