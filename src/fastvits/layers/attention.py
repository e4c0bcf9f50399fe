"""Scaled dot-product attention shared by every attention layer in fastvits.

`attend` has two paths that agree to float rounding:
- fused: `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU, one fused op on CPU);
- plain: the official op order (q @ k^T, then scale, then bias, softmax, @ v), bit-exact with the
  reference implementations.
The global switch picks the path (`set_fused_attn`), so parity tests can run the plain one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from .fused import Linear
from .switch import Switch

__all__ = [
    "Attention",
    "attend",
    "cross_attention",
    "fused_attn",
    "multi_head_attention",
    "set_fused_attn",
    "use_fused_attn",
]

_FUSED_ATTN = Switch("FASTVITS_FUSED_ATTN")


def use_fused_attn() -> bool:
    return _FUSED_ATTN.enabled


def set_fused_attn(enable: bool) -> None:
    """Turn the fused attention path on or off for all fastvits layers."""
    _FUSED_ATTN.set(enable)


def fused_attn(enable: bool) -> AbstractContextManager[None]:
    """Context manager form of `set_fused_attn`, restoring the previous setting on exit."""
    return _FUSED_ATTN(enable)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for q (..., Nq, d), k and v (..., Nk, d); bias broadcasts to (..., Nq, Nk)."""
    if _FUSED_ATTN.enabled:
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale  # (..., Nq, Nk)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v


def multi_head_attention(
    x: torch.Tensor,
    qkv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    scale: float,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention of tokens x (..., N, C) through a fused q/k/v projection, `attend` and an output projection,
    plus `residual` (added by the projection kernel: `proj` must then be a `fastvits.layers.fused.Linear`).

    Leading dims (batch, windows) are kept, so a bias or mask with one entry per window broadcasts
    against (B, nW, heads, N, N) without being repeated over the batch. The projections are arguments
    rather than attributes so that modules of other libraries (timm's Swin `WindowAttention`) can run
    through `attend`, and `fused_attn(False)` switches them to the plain path too.
    """
    *lead, N, _ = x.shape
    L = len(lead)
    head_dim = qkv.out_features // (3 * num_heads)
    qkv_out = qkv(x).reshape(*lead, N, 3, num_heads, head_dim)  # (..., N, 3, h, d)
    q, k, v = qkv_out.permute(L + 1, *range(L), L + 2, L, L + 3).unbind(0)  # 3 x (..., h, N, d); ONNX: no negative dims
    out = attend(q, k, v, scale, bias).transpose(-3, -2).reshape(*lead, N, num_heads * head_dim)  # (..., N, C)
    return proj(out) if residual is None else proj(out, residual=residual)


def cross_attention(
    x: torch.Tensor,
    context: torch.Tensor,
    q: nn.Linear,
    kv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    scale: float,
) -> torch.Tensor:
    """Queries from tokens x (B, N, C), keys and values from context tokens (B, M, C).

    The attention of layers that shrink the key set to cut the quadratic cost: PVT's spatial reduction
    (a strided conv of the map) and HiLo's Lo-Fi heads (an average-pooled map).
    """
    B, N, _ = x.shape
    head_dim = q.out_features // num_heads
    queries = q(x).reshape(B, N, num_heads, head_dim).transpose(1, 2)  # (B, h, N, d)
    kv_out = kv(context).reshape(B, context.shape[1], 2, num_heads, head_dim)  # (B, M, 2, h, d)
    k, v = kv_out.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, M, d)
    out = attend(queries, k, v, scale)  # (B, h, N, d)
    return proj(out.transpose(1, 2).reshape(B, N, num_heads * head_dim))  # (B, N, C)


class Attention(nn.Module):
    """Multi-head self-attention over (..., N, C) tokens with an optional additive bias.

    Key names (`qkv`, `proj`) follow the official FasterViT checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """attention(x) + residual (if given) for x (..., N, C)."""
        return multi_head_attention(x, self.qkv, self.proj, self.num_heads, self.scale, bias, residual)
