"""Spatial-reduction attention (SRA, PVT; Wang et al., ICCV 2021) as a 2-D layer.

Every token queries a shorter key/value sequence: the map reduced by a strided `sr_ratio` x `sr_ratio`
convolution, then LayerNorm, so the cost is N * N / sr_ratio^2 instead of N^2. PVT sets sr_ratio per
stage (8, 4, 2, 1 at strides 4 to 32), keeping about 7 x 7 keys for a 224 x 224 image. Maps whose sides
are not multiples of sr_ratio are zero-padded at the bottom/right before the reduction (PVT floors the
size, dropping the last rows and columns from the keys).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import cross_attention
from .attention2d import Attention2d
from .windows import pad_nchw

__all__ = ["SpatialReductionAttention2d"]


class SpatialReductionAttention2d(Attention2d):
    """Attention whose keys and values come from a map downsampled by `sr_ratio`.

    Args:
        dim: channels of input and output.
        num_heads: attention heads.
        sr_ratio: kernel and stride of the reducing convolution; 1 is plain global attention.
        qkv_bias: biases on the query and key/value projections.
        fused_attn: `F.scaled_dot_product_attention` instead of the plain matmul-softmax path.
        channels_last: (B, H, W, C) input and output if True, else (B, C, H, W).

    Parameter names (`q`, `kv`, `proj`, `sr`, `norm`) follow PVT.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        sr_ratio: int = 2,
        qkv_bias: bool = True,
        fused_attn: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(dim, channels_last)
        if dim % num_heads:
            raise ValueError(f"SpatialReductionAttention2d: dim={dim} is not divisible by num_heads={num_heads}")
        if sr_ratio < 1:
            raise ValueError(f"SpatialReductionAttention2d: sr_ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.fused_attn = fused_attn
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)  # (B, N, C)
        context = tokens
        if self.sr_ratio > 1:
            r = self.sr_ratio
            reduced = self.sr(pad_nchw(x.permute(0, 3, 1, 2), (r, r)))  # (B, C, ceil(H/r), ceil(W/r))
            context = self.norm(reduced.flatten(2).transpose(1, 2))  # (B, M, C)
        out = cross_attention(
            tokens, context, self.q, self.kv, self.proj, self.num_heads, self.scale, self.fused_attn
        )  # (B, N, C)
        return out.view(B, H, W, C)
