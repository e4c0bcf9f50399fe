"""HiLo attention (LITv2, Pan et al., NeurIPS 2022): high- and low-frequency heads side by side.

The heads of one layer are split in two groups that read the same input and write disjoint output
channels (there is no shared output projection):
- Hi-Fi heads attend inside non-overlapping s x s windows (local detail, high frequencies);
- Lo-Fi heads let every position attend to an s x s average-pooled copy of the map (global context,
  low frequencies).
`int(num_heads * alpha)` heads (truncated, as in the official code, so checkpoint shapes match) are
Lo-Fi, the rest Hi-Fi. With s = 1 the split is overridden: all heads are Lo-Fi without pooling, which
is plain global multi-head self-attention (stage 4 of every LITv2 model).

Maps whose sides are not multiples of s are zero-padded at the bottom and right (after the block's
norm), both branches run on the padded map without masking, and the result is cropped back: the
official dense-prediction behaviour. On divisible maps this is identical to the classification code.

HiLo is one of the 2-D layers (`Attention2d`: a map in either layout, chosen by `channels_last`) and
also takes the official (B, N, C) tokens with their H and W.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import cross_attention, multi_head_attention
from .attention2d import Attention2d
from .windows import pad_nhwc, window_partition, window_reverse

__all__ = ["HiLo", "hilo_head_split"]


def hilo_head_split(num_heads: int, alpha: float, window_size: int) -> tuple[int, int]:
    """(Lo-Fi heads, Hi-Fi heads) for a HiLo layer.

    Lo-Fi heads = int(num_heads * alpha): a float product truncated toward zero, not rounded (12 heads at
    alpha 0.9 give 10, not 11), exactly as the official code, so checkpoint shapes match. Window size 1
    makes every head Lo-Fi.
    """
    if window_size == 1:
        return num_heads, 0
    lofi = int(num_heads * alpha)
    return lofi, num_heads - lofi


class HiLo(Attention2d):
    """HiLo self-attention over a 2-D map of tokens, for any H x W.

    Args:
        dim: channels of input and output.
        num_heads: total heads; `dim` must be divisible by it (head_dim = dim // num_heads for both groups).
        window_size: s, the Hi-Fi window side and the Lo-Fi pooling factor; 1 means plain global attention.
        alpha: fraction of Lo-Fi heads (see `hilo_head_split`).
        qkv_bias: biases on the query/key/value projections (the output projections always have one).
        qk_scale: attention scale, default head_dim ** -0.5.
        fused_attn: `F.scaled_dot_product_attention` instead of the plain matmul-softmax path.
        channels_last: the layout of 4-D input and output, (B, H, W, C) if True, else (B, C, H, W).

    Parameter names (`l_q`, `l_kv`, `l_proj`, `h_qkv`, `h_proj`) follow the official checkpoints; a group's
    layers exist only when it has at least one head. The keyword-only arguments avoid a silent mix-up
    with the official positional order (dim, num_heads, qkv_bias, ...).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        window_size: int = 2,
        alpha: float = 0.5,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        fused_attn: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(dim, channels_last)
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"HiLo: dim={dim} must be a positive multiple of num_heads={num_heads}")
        if window_size < 1:
            raise ValueError(f"HiLo: window_size must be >= 1 (1 = plain global attention), got {window_size}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"HiLo: alpha is the fraction of Lo-Fi heads and must lie in [0, 1], got {alpha}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.alpha = alpha
        self.scale = qk_scale or self.head_dim**-0.5  # one scale for both groups
        self.fused_attn = fused_attn
        self.lofi_heads, self.hifi_heads = hilo_head_split(num_heads, alpha, window_size)
        self.lofi_dim = self.lofi_heads * self.head_dim
        self.hifi_dim = self.hifi_heads * self.head_dim
        if self.lofi_heads:
            self.l_q = nn.Linear(dim, self.lofi_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, 2 * self.lofi_dim, bias=qkv_bias)
            self.l_proj = nn.Linear(self.lofi_dim, self.lofi_dim)
        if self.hifi_heads:
            self.h_qkv = nn.Linear(dim, 3 * self.hifi_dim, bias=qkv_bias)
            self.h_proj = nn.Linear(self.hifi_dim, self.hifi_dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.window_size}, lofi_heads={self.lofi_heads}, "
            f"hifi_heads={self.hifi_heads}, head_dim={self.head_dim}"
        )

    def _hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention on a padded (B, Hp, Wp, C) map -> (B, Hp, Wp, hifi_dim)."""
        _, Hp, Wp, _ = x.shape
        s = self.window_size
        win = window_partition(x.contiguous(), (s, s))  # (B*nW, s*s, C)
        out = multi_head_attention(
            win, self.h_qkv, self.h_proj, self.hifi_heads, self.scale, fused=self.fused_attn
        )  # (B*nW, s*s, hifi_dim)
        return window_reverse(out, (s, s), (Hp, Wp))  # (B, Hp, Wp, hifi_dim)

    def _lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Queries everywhere, keys/values from the s x s average-pooled map -> (B, Hp, Wp, lofi_dim)."""
        B, Hp, Wp, C = x.shape
        tokens = x.reshape(B, Hp * Wp, C)  # (B, N, C)
        context = tokens
        if self.window_size > 1:
            # Pool the input, then project: equal to project-then-pool, and bit-exact with the official order.
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.window_size)  # (B, C, Hp/s, Wp/s)
            context = pooled.flatten(2).transpose(1, 2)  # (B, Nk, C)
        out = cross_attention(
            tokens, context, self.l_q, self.l_kv, self.l_proj, self.lofi_heads, self.scale, self.fused_attn
        )  # (B, N, lofi_dim)
        return out.view(B, Hp, Wp, self.lofi_dim)  # (B, Hp, Wp, lofi_dim)

    def forward(self, x: torch.Tensor, H: int | None = None, W: int | None = None) -> torch.Tensor:
        """HiLo on a map in the layer's layout, or on tokens (B, N, C) in row-major (h, w) order with their H, W.

        Returns the same layout as the input. For tokens, H and W may be omitted when the map is square.
        """
        if x.dim() == 4:
            return super().forward(x)
        if x.dim() != 3:
            raise ValueError(
                f"HiLo expects tokens (B, N, C) or a map {self.layout}, got shape {tuple(x.shape)}"
            )
        B, N, C = x.shape
        if H is None and W is None:
            side = math.isqrt(N)
            if side * side != N:
                raise ValueError(f"HiLo got {N} tokens, not a square map: pass H and W (forward(x, H, W))")
            H = W = side
        elif H is None or W is None:
            raise ValueError("HiLo: pass both H and W, or neither for a square map")
        if C != self.dim:
            raise ValueError(f"HiLo(dim={self.dim}) got tokens with {C} channels, shape {tuple(x.shape)}")
        if H * W != N:
            raise ValueError(f"HiLo got {N} tokens but H x W = {H} x {W} = {H * W}")
        return self.forward_map(x.reshape(B, H, W, C)).reshape(B, N, C)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        _, H, W, _ = x.shape
        s = self.window_size
        x = pad_nhwc(x, (s, s))  # (B, Hp, Wp, C), zeros at the bottom/right
        if self.hifi_heads and self.lofi_heads:
            out = torch.cat([self._hifi(x), self._lofi(x)], dim=-1)  # Hi-Fi channels first
        elif self.hifi_heads:
            out = self._hifi(x)
        else:
            out = self._lofi(x)
        if out.shape[1] != H or out.shape[2] != W:
            out = out[:, :H, :W]  # drop the padding
        return out
