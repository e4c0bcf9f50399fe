"""Global multi-head self-attention (ViT's MSA) as a 2-D layer: every token attends to every token.

The reference point of the other layers: full global context, at a cost quadratic in H * W.
"""

from __future__ import annotations

import torch

from .attention import Attention
from .attention2d import Attention2d

__all__ = ["GlobalAttention2d"]


class GlobalAttention2d(Attention2d):
    """Multi-head self-attention over all H * W tokens of a map.

    Args:
        dim: channels of input and output.
        num_heads: attention heads.
        qkv_bias: biases on the query/key/value projection.
        fused_attn: `F.scaled_dot_product_attention` instead of the plain matmul-softmax path.
        channels_last: (B, H, W, C) input and output if True, else (B, C, H, W).
    """

    def __init__(
        self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True, fused_attn: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(dim, channels_last)
        self.attn = Attention(dim, num_heads, qkv_bias, fused_attn=fused_attn)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        return self.attn(x.reshape(B, H * W, C)).view(B, H, W, C)  # via (B, N, C) tokens
