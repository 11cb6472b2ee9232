"""HAN: the Hybrid Attention Network baseline (Tian et al., ECCV 2020), as the authors' released code computes it.

One hybrid attention layer (self-attention plus cross-modal attention, the same weights for both directions),
then attentive multimodal multiple-instance pooling of per-segment class probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avvp.data.classes import NUM_CLASSES
from avvp.models import HANConfig, ParseOutput
from avvp.models.layers import Mlp, VisualFusion, check_inputs


class HybridAttentionLayer(nn.Module):
    """q <- LN1(q + CrossAttn(q, other) + SelfAttn(q)); q <- LN2(q + FF(q)); post-norm, ReLU feed-forward."""

    def __init__(self, config: HANConfig) -> None:
        super().__init__()
        dim, heads, dropout = config.dim, config.num_heads, config.dropout
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = Mlp(dim, config.ff_dim, dim, activation=nn.ReLU, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop_cross = nn.Dropout(dropout)
        self.drop_self = nn.Dropout(dropout)

    def forward(self, query: Tensor, other: Tensor | None) -> Tensor:
        """query [B, T, C] attends to itself and to `other` [B, T, C] (None: to itself only) -> [B, T, C]."""
        # In the authors' order (cross, self, then their dropouts), so that the dropout draws keep their order.
        cross = self.cross_attn(query, other, other, need_weights=False)[0] if other is not None else None
        attended, _ = self.self_attn(query, query, query, need_weights=False)
        residual = query if cross is None else query + self.drop_cross(cross)
        query = self.norm1(residual + self.drop_self(attended))
        return self.norm2(query + self.ffn(query))


class HAN(nn.Module):
    """HAN; `forward(audio, res152, r2plus1d)` returns a `ParseOutput`.

    PyTorch's default initialisation is kept, as in the authors' code. Its cross-modal-free form
    (`cross_modal=False`) drops the cross-modal attention term of the hybrid attention layer (the noise estimator of
    JoMoLD): each modality's segments attend to themselves only, so p_a and the audio segments see the audio alone,
    p_v and the visual ones the visual alone; the modality attention still fuses both into p_av.
    """

    def __init__(self, config: HANConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HANConfig()
        dim = config.dim
        self.segment_head = nn.Linear(dim, NUM_CLASSES)  # per segment and modality: class probabilities
        self.temporal_attention = nn.Linear(dim, NUM_CLASSES)  # attention over segments, per class
        self.modality_attention = nn.Linear(dim, NUM_CLASSES)  # attention over the two modalities, per class
        self.audio_proj = nn.Linear(128, dim)
        self.visual_fusion = VisualFusion(dim)
        self.hybrid_attention = HybridAttentionLayer(config)

    def forward(self, audio: Tensor, res152: Tensor, r2plus1d: Tensor, cross_modal: bool = True) -> ParseOutput:
        """audio [B, 10, 128], res152 [B, 80 or 10, 2048], r2plus1d [B, 10, 512] -> probabilities."""
        check_inputs(audio, res152, r2plus1d)
        audio_segments = self.audio_proj(audio)  # [B, T, C]
        visual_segments = self.visual_fusion(res152, r2plus1d)  # [B, T, C]
        audio_out = self.hybrid_attention(audio_segments, visual_segments if cross_modal else None)  # [B, T, C]
        visual_out = self.hybrid_attention(visual_segments, audio_segments if cross_modal else None)  # [B, T, C]

        features = torch.stack([audio_out, visual_out], dim=2)  # [B, T, 2, C]
        # The pooling runs in float32 from the logits, also under bf16 autocast (see ParseOutput).
        segment_probs = torch.sigmoid(self.segment_head(features).float())  # [B, T, 2, 25]
        temporal_weights = self.temporal_attention(features).float().softmax(dim=1)  # [B, T, 2, 25]
        modality_weights = self.modality_attention(features).float().softmax(dim=2)  # [B, T, 2, 25]
        pooled = temporal_weights * segment_probs  # [B, T, 2, 25]
        return ParseOutput(
            p_av=(pooled * modality_weights).sum(dim=(1, 2)),  # [B, 25]
            p_a=pooled[:, :, 0].sum(dim=1),  # [B, 25]
            p_v=pooled[:, :, 1].sum(dim=1),  # [B, 25]
            audio=segment_probs[:, :, 0],  # [B, T, 25]
            visual=segment_probs[:, :, 1],  # [B, T, 25]
            extras={"audio_features": audio_out, "visual_features": visual_out},  # the contrastive term's
        )
