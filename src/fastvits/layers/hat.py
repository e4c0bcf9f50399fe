"""Hierarchical Attention (HAT) from FasterViT: window attention with carrier tokens.

Every window of a feature map gets `ct_size x ct_size` carrier tokens (CTs), initialised by pooling
the map. In each HAT block the CTs of all windows first attend to each other globally (a cheap
attention over a few tokens per window), then travel with their window: they are prepended to the
window's tokens for the local window attention and split off again. The last block of a stage can
propagate the CTs back into the window tokens by nearest upsampling.

Carrier tokens are kept window-major, shape (B, nWh * nWw * c * c, C): windows row-major over the
window grid, then the c x c tokens of each window row-major.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp

from .attention import Attention
from .pos_embed import ContinuousRelativeBias, MlpPositionEmbedding
from .windows import window_partition, window_reverse

__all__ = ["CarrierTokenInit", "HATBlock", "WindowAttention", "ct_to_raster", "ct_to_windows", "ct_pool_geometry"]


def ct_to_raster(ct: torch.Tensor, grid: tuple[int, int], ct_size: int) -> torch.Tensor:
    """Window-major carrier tokens (B, N, C) -> raster order over the (c*nWh) x (c*nWw) CT grid."""
    B, N, C = ct.shape
    size = (grid[0] * ct_size, grid[1] * ct_size)
    windows = ct.reshape(B * grid[0] * grid[1], ct_size * ct_size, C)  # (B*nW, c*c, C)
    return window_reverse(windows, (ct_size, ct_size), size).reshape(B, N, C)  # (B, N, C) raster


def ct_to_windows(ct: torch.Tensor, grid: tuple[int, int], ct_size: int) -> torch.Tensor:
    """Raster-order carrier tokens (B, N, C) -> one row per window (B * nW, c*c, C)."""
    B, N, C = ct.shape
    ct = ct.view(B, grid[0] * ct_size, grid[1] * ct_size, C)  # (B, Hc, Wc, C)
    return window_partition(ct, (ct_size, ct_size))  # (B*nW, c*c, C)


def ct_pool_geometry(size: int, windows: int, ct_size: int) -> tuple[int, int]:
    """(kernel, stride) of the average pooling that turns `size` pixels into `windows * ct_size` CTs.

    The official rule: stride = size // out, kernel = size - (out - 1) * stride. The pooling regions
    overlap and are not aligned with the windows; it is reproduced as is for checkpoint parity.
    """
    out = windows * ct_size
    stride = size // out
    return size - (out - 1) * stride, stride


class CarrierTokenInit(nn.Module):
    """Carrier-token initialiser: depthwise 3x3 conv, then average pooling to c x c tokens per window."""

    def __init__(self, dim: int, ct_size: int) -> None:
        super().__init__()
        self.ct_size = ct_size
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: (B, C, H, W) padded map with H = grid[0] * window, W = grid[1] * window -> (B, N_ct, C)."""
        kh, sh = ct_pool_geometry(x.shape[2], grid[0], self.ct_size)
        kw, sw = ct_pool_geometry(x.shape[3], grid[1], self.ct_size)
        ct = F.avg_pool2d(self.pos_embed(x), (kh, kw), (sh, sw))  # (B, C, c*nWh, c*nWw)
        B, C = ct.shape[:2]
        windows = window_partition(ct.permute(0, 2, 3, 1), (self.ct_size, self.ct_size))  # (B*nW, c*c, C)
        return windows.reshape(B, -1, C)  # (B, N_ct, C) window-major


class WindowAttention(Attention):
    """Attention over a token grid with a continuous relative position bias (`rel_pos`).

    Tokens beyond the grid (carrier tokens prepended to a window) get zero bias.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.rel_pos = ContinuousRelativeBias(num_heads)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, self.rel_pos(grid, x.shape[1], x.device))


def _layer_scale(dim: int, init: float | None) -> nn.Parameter | None:
    return nn.Parameter(init * torch.ones(dim)) if init is not None else None


def _scaled(y: torch.Tensor, gamma: nn.Parameter | None) -> torch.Tensor:
    return y if gamma is None else gamma * y


class HATBlock(nn.Module):
    """One HAT block over window tokens (B*nW, w*w, C) and window-major carrier tokens (B, N_ct, C).

    Without carrier tokens (`ct is None`, e.g. a single window) it is a plain window-attention block.
    Parameter names follow the official checkpoints.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        ct_size: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        carrier_tokens: bool = True,
        propagate: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.ct_size = ct_size
        self.propagate = propagate
        hidden = int(dim * mlp_ratio)
        self.pos_embed = MlpPositionEmbedding(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma3 = _layer_scale(dim, layer_scale)
        self.gamma4 = _layer_scale(dim, layer_scale)
        self.carrier_tokens = carrier_tokens
        if carrier_tokens:
            self.hat_norm1 = nn.LayerNorm(dim)
            self.hat_attn = WindowAttention(dim, num_heads, qkv_bias)
            self.hat_norm2 = nn.LayerNorm(dim)
            self.hat_mlp = Mlp(dim, hidden, act_layer=act_layer)
            self.hat_pos_embed = MlpPositionEmbedding(dim)
            self.gamma1 = _layer_scale(dim, layer_scale)
            self.gamma2 = _layer_scale(dim, layer_scale)

    def _global_ct_attention(self, ct: torch.Tensor, ct_grid: tuple[int, int]) -> torch.Tensor:
        """Carrier tokens of one image attend to each other; ct in raster order (B, N_ct, C)."""
        ct = ct + self.hat_pos_embed(ct_grid, ct.device, ct.dtype)
        ct = ct + self.drop_path(_scaled(self.hat_attn(self.hat_norm1(ct), ct_grid), self.gamma1))
        return ct + self.drop_path(_scaled(self.hat_mlp(self.hat_norm2(ct)), self.gamma2))

    def forward(
        self, x: torch.Tensor, ct: torch.Tensor | None, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B*nW, w*w, C) windows; ct: (B, N_ct, C) window-major or None; grid: (nWh, nWw)."""
        w, c = self.window_size, self.ct_size
        x = x + self.pos_embed((w, w), x.device, x.dtype)
        if ct is not None:
            ct_grid = (grid[0] * c, grid[1] * c)
            ct = self._global_ct_attention(ct_to_raster(ct, grid, c), ct_grid)
            x = torch.cat([ct_to_windows(ct, grid, c), x], dim=1)  # (B*nW, c*c + w*w, C)
        x = x + self.drop_path(_scaled(self.attn(self.norm1(x), (w, w)), self.gamma3))
        x = x + self.drop_path(_scaled(self.mlp(self.norm2(x)), self.gamma4))
        if ct is None:
            return x, None
        ct_w, x = x.split([c * c, w * w], dim=1)  # (B*nW, c*c, C), (B*nW, w*w, C)
        if self.propagate:
            Bw, _, C = ct_w.shape
            ct_map = ct_w.transpose(1, 2).reshape(Bw, C, c, c)  # (B*nW, C, c, c)
            up = F.interpolate(ct_map, size=(w, w), mode="nearest")  # (B*nW, C, w, w)
            x = x + _scaled(up.flatten(2).transpose(1, 2), self.gamma1)
        return x, ct_w.reshape(ct.shape)
