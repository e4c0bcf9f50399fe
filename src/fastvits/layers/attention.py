"""Multi-head attention: the one place where fastvits computes softmax(q k^T * scale + bias) v.

`attend` holds both paths side by side, chosen by a `fused` flag that each attention module sets at construction
(timm's `fused_attn` convention):
- plain (the default): q @ k^T, then the scale, the bias, softmax and @ v, the official op order, so float32
  outputs equal the official code's to the ulp;
- fused: `F.scaled_dot_product_attention` (flash and memory-efficient kernels on a GPU, one fused op on a CPU),
  equal to the plain path up to float rounding.

`multi_head_attention` and `cross_attention` take their projections as arguments, so that layers of other
libraries (timm's Swin `WindowAttention` in `fastvits.hat_swin`) run through the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "AttentionProjections", "attend", "cross_attention", "multi_head_attention"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
    fused: bool = False,
    dropout: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for q (..., Nq, d), k and v (..., Nk, d); bias broadcasts to (..., Nq, Nk).

    `dropout` is the attention-probability dropout (training only: pass 0.0 in eval).
    """
    if fused:
        mask = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale  # (..., Nq, Nk)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    if dropout:
        attn = F.dropout(attn, dropout)
    return attn @ v  # (..., Nq, d)


def multi_head_attention(
    x: torch.Tensor,
    qkv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    scale: float,
    bias: torch.Tensor | None = None,
    fused: bool = False,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Self-attention of tokens x (..., N, C) through a q/k/v projection, `attend` and an output projection.

    Leading dims (batch, windows) are kept, so a bias or mask with one entry per window broadcasts against
    (B, nW, heads, N, N) without being repeated over the batch.
    """
    *lead, N, _ = x.shape
    L = len(lead)
    head_dim = qkv.out_features // (3 * num_heads)
    qkv_out = qkv(x).reshape(*lead, N, 3, num_heads, head_dim)  # (..., N, 3, h, d)
    q, k, v = qkv_out.permute(L + 1, *range(L), L + 2, L, L + 3).unbind(0)  # 3 x (..., h, N, d); ONNX: no negative dims
    out = attend(q, k, v, scale, bias, fused, dropout)  # (..., h, N, d)
    return proj(out.transpose(-3, -2).reshape(*lead, N, num_heads * head_dim))  # (..., N, C)


def cross_attention(
    x: torch.Tensor,
    context: torch.Tensor,
    q: nn.Linear,
    kv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    scale: float,
    fused: bool = False,
) -> torch.Tensor:
    """Queries from tokens x (B, N, C), keys and values from context tokens (B, M, C).

    The attention of layers that shrink the key set to cut the quadratic cost: PVT's spatial reduction (a strided
    conv of the map) and HiLo's Lo-Fi heads (an average-pooled map).
    """
    B, N, _ = x.shape
    head_dim = q.out_features // num_heads
    queries = q(x).reshape(B, N, num_heads, head_dim).transpose(1, 2)  # (B, h, N, d)
    kv_out = kv(context).reshape(B, context.shape[1], 2, num_heads, head_dim)  # (B, M, 2, h, d)
    k, v = kv_out.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, M, d)
    out = attend(queries, k, v, scale, fused=fused)  # (B, h, N, d)
    return proj(out.transpose(1, 2).reshape(B, N, num_heads * head_dim))  # (B, N, C)


class AttentionProjections(nn.Module):
    """The q/k/v and output projections of multi-head self-attention with its scale and dropouts: what `Attention`
    and HAT's `WindowAttention` share (they differ in where the bias comes from).

    Args:
        dim: channels of input and output.
        num_heads: attention heads; `dim` must be divisible by it.
        qkv_bias: biases on the query/key/value projection.
        qk_scale: attention scale, default head_dim ** -0.5.
        attn_drop: dropout of the attention probabilities (training only).
        proj_drop: dropout after the output projection.
        fused_attn: `F.scaled_dot_product_attention` instead of the plain matmul-softmax path.

    Key names (`qkv`, `proj`) follow the official FasterViT checkpoints.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim={dim} must be a positive multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (..., N, C), bias broadcasting to (..., heads, N, N) -> (..., N, C)."""
        dropout = self.attn_drop if self.training else 0.0
        x = multi_head_attention(x, self.qkv, self.proj, self.num_heads, self.scale, bias, self.fused_attn, dropout)
        return self.proj_drop(x)


class Attention(AttentionProjections):
    """Multi-head self-attention over (..., N, C) tokens with an optional additive bias (see
    `AttentionProjections` for the arguments)."""

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., N, C), bias broadcasting to (..., heads, N, N) -> (..., N, C)."""
        return self.attention(x, bias)
