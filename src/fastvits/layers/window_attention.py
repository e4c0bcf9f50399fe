"""Swin's window attention (W-MSA), optionally on shifted windows (SW-MSA), as a 2-D layer.

Tokens attend only inside non-overlapping w x w windows, so the cost grows linearly with the number of
tokens; alternating blocks shift the windows by w // 2 so that information crosses window borders over
depth. Each head adds a learned bias per relative offset (Swin's table). The map is zero-padded to window
multiples before the shift, the padding is masked out (unlike Swin, whose zero padding takes part in
attention), and the result is cropped back.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from .attention import Attention
from .attention2d import Attention2d
from .pos_embed import gather_relative_bias
from .windows import pad_nhwc, shifted_window_mask, window_partition, window_reverse

__all__ = ["WindowAttention2d"]


class WindowAttention2d(Attention2d):
    """(Shifted) window multi-head attention over a map of any H x W.

    Args:
        dim: channels of input and output.
        num_heads: attention heads.
        window_size: side of the square windows.
        shift_size: cyclic shift of the windows (Swin uses window_size // 2 in every other block), 0 for none.
        qkv_bias: biases on the query/key/value projection.
        fused_attn: `F.scaled_dot_product_attention` instead of the plain matmul-softmax path.
        channels_last: (B, H, W, C) input and output if True, else (B, C, H, W).

    Parameter names (`attn.qkv`, `attn.proj`, `relative_position_bias_table`) mirror Swin's.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        window_size: int = 7,
        shift_size: int = 0,
        qkv_bias: bool = True,
        fused_attn: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(dim, channels_last)
        if window_size < 1:
            raise ValueError(f"WindowAttention2d: window_size must be at least 1, got {window_size}")
        if not 0 <= shift_size < window_size:
            raise ValueError(
                f"WindowAttention2d: shift_size must lie in [0, window_size={window_size}), got {shift_size}"
            )
        self.window_size = window_size
        self.shift_size = shift_size
        self.attn = Attention(dim, num_heads, qkv_bias, fused_attn=fused_attn)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}"

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        w, s = self.window_size, self.shift_size
        x = pad_nhwc(x, (w, w))  # (B, Hp, Wp, C)
        Hp, Wp = x.shape[1], x.shape[2]
        if s:
            x = torch.roll(x, (-s, -s), dims=(1, 2))
        windows = window_partition(x, (w, w)).view(B, -1, w * w, C)  # (B, nW, w*w, C)
        bias = gather_relative_bias(self.relative_position_bias_table, (w, w)).unsqueeze(0)  # (1, heads, N, N)
        mask = shifted_window_mask((H, W), w, s, x.device)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # (nW, heads, N, N)
        out = self.attn(windows, bias)  # (B, nW, w*w, C)
        out = window_reverse(out.view(-1, w * w, C), (w, w), (Hp, Wp))  # (B, Hp, Wp, C)
        if s:
            out = torch.roll(out, (s, s), dims=(1, 2))
        return out[:, :H, :W]
