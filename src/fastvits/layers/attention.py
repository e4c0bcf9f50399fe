"""Scaled dot-product attention shared by every attention layer in fastvits.

`attend` has two paths that agree to float rounding:
- fused: `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU, one fused op on CPU);
- plain: the official op order (q @ k^T, then scale, then bias, softmax, @ v), bit-exact with the
  reference implementations.
The global switch picks the path (`set_fused_attn`), so parity tests can run the plain one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["attend", "use_fused_attn", "set_fused_attn", "fused_attn", "Attention"]

_FUSED_ATTN = os.environ.get("FASTVITS_FUSED_ATTN", "1") != "0"


def use_fused_attn() -> bool:
    return _FUSED_ATTN


def set_fused_attn(enable: bool) -> None:
    """Turn the fused attention path on or off for all fastvits layers."""
    global _FUSED_ATTN
    _FUSED_ATTN = bool(enable)


@contextmanager
def fused_attn(enable: bool) -> Iterator[None]:
    """Context manager form of `set_fused_attn`, restoring the previous setting on exit."""
    previous = _FUSED_ATTN
    set_fused_attn(enable)
    try:
        yield
    finally:
        set_fused_attn(previous)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for q (..., Nq, d), k and v (..., Nk, d); bias broadcasts to (..., Nq, Nk)."""
    if _FUSED_ATTN:
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale  # (..., Nq, Nk)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, C) tokens with an optional additive bias.

    Key names (`qkv`, `proj`) follow the official FasterViT checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        q, k, v = qkv.unbind(0)
        x = attend(q, k, v, self.scale, bias)  # (B, h, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))
