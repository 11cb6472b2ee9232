"""Building blocks shared by MGN and HAN: MLP, attention, transformer blocks, assignment, grouping, visual fusion.

The attention and grouping blocks follow the GroupViT design that MGN builds on (as the MGN authors' code uses
it); the details that decide whether the authors' checkpoints reproduce are noted where they occur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvp.errors import AvvpError

FRAMES_PER_SECOND = 8  # res152 frames per one-second segment (80 frames per 10 s video)


def init_weights(module: nn.Module) -> None:
    """MGN initialisation, applied with `model.apply`: Linear trunc-normal std 0.02 / bias 0, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training, rescaling the kept ones."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Mlp(nn.Module):
    """Two linear layers with an activation between (dropout after each, as in HAN's feed-forward)."""

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, *, activation: type[nn.Module] = nn.GELU, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = activation()
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _attend(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
    """Scaled dot-product attention over `num_heads` heads: [B, N, C] queries, [B, L, C] keys/values -> [B, N, C]."""
    batch, num_queries, channels = q.shape
    head_dim = channels // num_heads
    q = q.reshape(batch, num_queries, num_heads, head_dim).transpose(1, 2)  # [B, H, N, C/H]
    k = k.reshape(batch, k.shape[1], num_heads, head_dim).transpose(1, 2)  # [B, H, L, C/H]
    v = v.reshape(batch, v.shape[1], num_heads, head_dim).transpose(1, 2)  # [B, H, L, C/H]
    # Written out (as the authors' code has it) rather than F.scaled_dot_product_attention: the sequences here are
    # short (10-50 tokens, head dimension 16 at width 128), where the fused CPU kernel is slower in fp32 (16 ms of
    # MGN's 130 ms step) and far slower in bf16 (100 ms of 213); bench/profile_step.py.
    weights = (q @ k.transpose(-2, -1) * head_dim**-0.5).softmax(dim=-1)  # [B, H, N, L]
    return (weights @ v).transpose(1, 2).reshape(batch, num_queries, channels)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (timm / GroupViT layout: `qkv`, `proj`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x [B, N, C]
        return self.proj(_attend(q, k, v, self.num_heads))


class CrossAttention(nn.Module):
    """Multi-head attention of queries over another sequence, with separate q, k, v projections."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        out = _attend(self.q_proj(query), self.k_proj(key), self.v_proj(key), self.num_heads)
        return self.proj(out)


class SelfBlock(nn.Module):
    """Pre-norm transformer block; the only place MGN uses stochastic depth."""

    def __init__(self, dim: int, num_heads: int = 8, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossBlock(nn.Module):
    """Post-norm cross-attention block: queries attend to `key`, then an MLP, then a final LayerNorm."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.norm_post = nn.LayerNorm(dim)  # registered first: the authors' key order
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, dim)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        query = query + self.attn(query, key)
        query = query + self.mlp(self.norm2(query))
        return self.norm_post(query)


def hard_softmax(logits: Tensor, dim: int) -> Tensor:
    """One-hot argmax along `dim`, with the gradient of the softmax (straight-through)."""
    soft = logits.softmax(dim)
    hard = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class Assignment(nn.Module):
    """Assigns L inputs to S groups with one-head attention normalised over the GROUP axis.

    'soft' uses a softmax over groups; 'hard' a straight-through one-hot (a Gumbel-softmax sample, tau 1, while
    training). Each group then averages its assigned inputs with a +1 in the denominator, so a group that receives
    almost nothing stays near zero instead of being blown up.
    """

    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        if kind not in ("soft", "hard"):
            raise AvvpError(f"assignment must be 'soft' or 'hard', not {kind!r}")
        self.kind = kind
        self.scale = dim**-0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, groups: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """groups [B, S, C], x [B, L, C] -> (out [B, S, C], maps {'hard', 'soft'}: [B, S, L])."""
        logits = self.q_proj(groups) @ self.k_proj(x).transpose(1, 2) * self.scale  # [B, S, L]
        soft = logits.softmax(dim=1)
        if self.kind == "soft":
            assign = soft
        elif self.training:
            assign = F.gumbel_softmax(logits, tau=1.0, hard=True, dim=1)
        else:
            assign = hard_softmax(logits, dim=1)
        maps = {"hard": assign, "soft": 1.0 + soft.softmax(dim=2)}
        weights = assign / (assign.sum(dim=2, keepdim=True) + 1.0)  # [B, S, L]
        return self.proj(weights @ self.v_proj(x)), maps


class GroupingBlock(nn.Module):
    """Groups the inputs x [B, L, C] into `num_output_groups` tokens seeded by `num_groups` group tokens.

    The group tokens are mixed along the token axis into the output groups, refined by cross-attention over x,
    and then collect x through the assignment (GroupViT's grouping block; key names as in the authors' code).
    """

    def __init__(self, dim: int, num_groups: int, num_output_groups: int, assign: str, num_heads: int = 8) -> None:
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = Mlp(num_groups, dim // 2, num_output_groups)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossBlock(dim, num_heads)
        self.assign = Assignment(dim, assign)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, 4 * dim, dim)

    def forward(self, x: Tensor, groups: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x [B, L, C], groups [B, S, C] -> (grouped [B, S_out, C], maps {'hard', 'soft'}: [B, S_out, L])."""
        groups = self.norm_tokens(groups)
        x = self.norm_x(x)
        projected = self.mlp_inter(groups.transpose(1, 2)).transpose(1, 2)  # [B, S_out, C]
        projected = self.pre_assign_attn(self.norm_post_tokens(projected), x)
        grouped, maps = self.assign(projected, x)
        grouped = grouped + projected
        return grouped + self.mlp_channels(self.norm_new_x(grouped)), maps


class VisualFusion(nn.Module):
    """Fuses frame (ResNet-152) and snippet (R(2+1)D) features into one visual feature per second.

    The 80 frame features are averaged per second BEFORE the linear layer: the same model as the authors'
    (projection then average pooling, since the linear map commutes with the mean) and it accepts features
    that are already averaged ([B, 10, 2048]).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res152_proj = nn.Linear(2048, dim)
        self.r2plus1d_proj = nn.Linear(512, dim)
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, res152: Tensor, r2plus1d: Tensor) -> Tensor:
        """res152 [B, 80 or 10, 2048], r2plus1d [B, T, 512] -> [B, T, C]."""
        segments = r2plus1d.shape[1]
        if res152.shape[1] == segments * FRAMES_PER_SECOND:
            res152 = res152.reshape(res152.shape[0], segments, FRAMES_PER_SECOND, -1).mean(dim=2)  # [B, T, 2048]
        frames = self.res152_proj(res152)  # [B, T, C]
        snippets = self.r2plus1d_proj(r2plus1d)  # [B, T, C]
        return self.fuse(torch.cat([frames, snippets], dim=-1))


def check_inputs(audio: Tensor, res152: Tensor, r2plus1d: Tensor) -> None:
    """Clear error for feature tensors of the wrong shape (before they fail deep inside a matmul)."""
    if audio.ndim != 3 or audio.shape[-1] != 128:
        raise AvvpError(f"audio features must be [B, 10, 128] (VGGish), got {list(audio.shape)}")
    batch, segments = audio.shape[:2]
    if r2plus1d.ndim != 3 or tuple(r2plus1d.shape) != (batch, segments, 512):
        raise AvvpError(f"r2plus1d features must be [B, {segments}, 512] (R(2+1)D-18), got {list(r2plus1d.shape)}")
    frames_ok = res152.shape[1:2] in (torch.Size([segments]), torch.Size([segments * FRAMES_PER_SECOND]))
    if res152.ndim != 3 or res152.shape[0] != batch or res152.shape[-1] != 2048 or not frames_ok:
        raise AvvpError(
            f"res152 features must be [B, {segments * FRAMES_PER_SECOND}, 2048] or [B, {segments}, 2048] "
            f"(ResNet-152 frames, or their per-second means), got {list(res152.shape)}"
        )
