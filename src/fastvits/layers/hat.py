"""Hierarchical Attention (HAT) from FasterViT: window attention with carrier tokens.

Every window of a feature map gets `ct_size x ct_size` carrier tokens (CTs), initialised by pooling the map. In
each HAT block the CTs of all windows first attend to each other globally (a cheap attention over a few tokens per
window), then travel with their window: they are prepended to the window's tokens for the local window attention
and split off again. The last block of a stage can propagate the CTs back into the window tokens by nearest
upsampling.

Carrier tokens are kept window-major, shape (B, nWh * nWw * c * c, C): windows row-major over the window grid, then
the c x c tokens of each window row-major.

`hierarchical_attention` is the whole mechanism on a feature map (padding, carrier-token initialisation, HAT
blocks, propagation, cropping), read top to bottom; `HAT2d` is it as a 2-D layer for other networks, and
FasterViT's transformer stages call it with their own blocks. The pieces (`CarrierTokenInit`, the layout helpers,
`propagate_carrier_tokens`) also serve HAT inside Swin (`fastvits.hat_swin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from .attention import AttentionProjections
from .attention2d import Attention2d
from .grad_checkpoint import call_block
from .pos_embed import ContinuousRelativeBias, MlpPositionEmbedding
from .windows import crop_nhwc, is_static, pad_nchw, window_partition, window_reverse

__all__ = [
    "CarrierTokenInit",
    "HAT2d",
    "HATBlock",
    "WindowAttention",
    "avg_pool_by_matmul",
    "ct_pool_geometry",
    "ct_to_raster",
    "ct_to_windows",
    "hat_blocks",
    "hierarchical_attention",
    "propagate_carrier_tokens",
]


# ------------------------------------------------------------------------------------- carrier-token layout
def ct_to_raster(ct: torch.Tensor, grid: tuple[int, int], ct_size: int) -> torch.Tensor:
    """Window-major carrier tokens (B, N, C) -> raster order over the (c*nWh) x (c*nWw) CT grid."""
    B, N, C = ct.shape
    size = (grid[0] * ct_size, grid[1] * ct_size)
    windows = ct.reshape(B * grid[0] * grid[1], ct_size * ct_size, C)  # (B*nW, c*c, C)
    return window_reverse(windows, (ct_size, ct_size), size, B).reshape(B, N, C)  # (B, N, C) raster


def ct_to_windows(ct: torch.Tensor, grid: tuple[int, int], ct_size: int) -> torch.Tensor:
    """Raster-order carrier tokens (B, N, C) -> one row per window (B * nW, c*c, C)."""
    B, _N, C = ct.shape
    ct = ct.view(B, grid[0] * ct_size, grid[1] * ct_size, C)  # (B, Hc, Wc, C)
    return window_partition(ct, (ct_size, ct_size))  # (B*nW, c*c, C)


def ct_pool_geometry(windows: int, window: int, ct_size: int) -> tuple[int, int]:
    """(kernel, stride) of the average pooling that turns `windows` windows of `window` pixels (the padded map) into
    `windows * ct_size` CTs.

    The official rule: stride = size // out, kernel = size - (out - 1) * stride, for size = windows * window and
    out = windows * ct_size. The pooling regions overlap and are not aligned with the windows; it is reproduced as
    is for checkpoint parity. Since size / out = window / ct_size, the stride is `window // ct_size`: written so,
    kernel and stride stay linear in `windows`, which keeps torch.compile's symbolic shapes simple (the floor
    division of two symbolic sizes made `dynamic=True` stall).
    """
    stride = window // ct_size
    return windows * window - (windows * ct_size - 1) * stride, stride


def _pool_matrix(windows: int, window: int, ct_size: int, like: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(windows * ct_size, windows * window) 0/1 matrix whose row i marks the pixels of pooling region i on one
    axis, and the regions' length."""
    kernel, stride = ct_pool_geometry(windows, window, ct_size)
    start = torch.arange(windows * ct_size, device=like.device)[:, None] * stride  # (out, 1)
    pixel = torch.arange(windows * window, device=like.device)[None, :]  # (1, size)
    return ((pixel >= start) & (pixel < start + kernel)).to(like.dtype), kernel  # (out, size)


def avg_pool_by_matmul(x: torch.Tensor, grid: tuple[int, int], window: tuple[int, int], ct_size: int) -> torch.Tensor:
    """The carrier-token average pooling as two matrix products, for symbolic sizes.

    `F.avg_pool2d` takes its kernel size as a constant, so under `torch.compile(dynamic=True)` the kernel (which
    grows with the window grid) would pin the graph to one input size. The same sums taken one axis at a time
    differ from it only in rounding order.
    """
    rows, kh = _pool_matrix(grid[0], window[0], ct_size, x)  # (c*nWh, Hp)
    cols, kw = _pool_matrix(grid[1], window[1], ct_size, x)  # (c*nWw, Wp)
    return rows @ x @ cols.T / (kh * kw)  # (B, C, c*nWh, c*nWw)


class CarrierTokenInit(nn.Module):
    """Carrier-token initialiser: depthwise 3x3 conv, then average pooling to c x c tokens per window."""

    def __init__(self, dim: int, ct_size: int) -> None:
        super().__init__()
        self.ct_size = ct_size
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
        """x: (B, C, H, W) padded map with H = grid[0] * window[0], W = grid[1] * window[1] -> (B, N_ct, C)."""
        x = self.pos_embed(x)
        if is_static(*grid):
            # int(): TorchScript tracing records sizes as tensors, which its ONNX export cannot take as a kernel
            # size once the batch is dynamic; H and W are fixed in a traced graph anyway.
            kh, sh = map(int, ct_pool_geometry(grid[0], window[0], self.ct_size))
            kw, sw = map(int, ct_pool_geometry(grid[1], window[1], self.ct_size))
            ct = F.avg_pool2d(x, (kh, kw), (sh, sw))  # (B, C, c*nWh, c*nWw)
        else:  # symbolic sizes: no constant kernel size
            ct = avg_pool_by_matmul(x, grid, window, self.ct_size)  # (B, C, c*nWh, c*nWw)
        B, C = ct.shape[:2]
        windows = window_partition(ct.permute(0, 2, 3, 1), (self.ct_size, self.ct_size))  # (B*nW, c*c, C)
        return windows.reshape(B, ct.shape[2] * ct.shape[3], C)  # (B, N_ct, C) window-major


def propagate_carrier_tokens(ct: torch.Tensor, ct_size: int, window: tuple[int, int]) -> torch.Tensor:
    """Each window's c x c carrier tokens (B*nW, c*c, C) upsampled (nearest) onto its tokens -> (B*nW, wh*ww, C)."""
    Bw, _, C = ct.shape
    ct_map = ct.transpose(1, 2).reshape(Bw, C, ct_size, ct_size)  # (B*nW, C, c, c)
    up = F.interpolate(ct_map, size=window, mode="nearest")  # (B*nW, C, wh, ww)
    return up.flatten(2).transpose(1, 2)  # (B*nW, wh*ww, C)


# ------------------------------------------------------------------------------------------------ blocks
class WindowAttention(AttentionProjections):
    """Multi-head attention over a token grid with a continuous relative position bias (`rel_pos`; see
    `AttentionProjections` for the arguments).

    Tokens in front of the grid's (carrier tokens prepended to a window) get zero bias. Key names (`qkv`, `proj`,
    `rel_pos` for the official `pos_emb_funct`) follow the official checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.rel_pos = ContinuousRelativeBias(num_heads)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: (..., N, C) tokens whose last grid[0] * grid[1] lie on the grid -> (..., N, C)."""
        return self.attention(x, self.rel_pos(grid, x.shape[-2]))  # bias (1, heads, N, N)


def _layer_scale(dim: int, init: float | None) -> nn.Parameter | None:
    return nn.Parameter(init * torch.ones(dim)) if init is not None else None


def _scaled(y: torch.Tensor, gamma: nn.Parameter | None) -> torch.Tensor:
    return y if gamma is None else gamma * y


class HATBlock(nn.Module):
    """One HAT block over window tokens (B*nW, w*w, C) and window-major carrier tokens (B, N_ct, C).

    Without carrier tokens (`ct is None`, e.g. a single window) it is a plain window-attention block. `mlp_ratio=0`
    leaves out both MLPs (window and carrier tokens): an attention-only block, for using HAT as a token mixer inside
    blocks that bring their own MLP. `pos_embed=False` leaves out FasterViT's absolute position MLPs (added to the
    window tokens and to the carrier tokens in every block), for host networks that bring their own position
    encoding. Layer scales (`gamma1`..`gamma4`) are parameters when `layer_scale` is given, else absent. Parameter
    names follow the official checkpoints.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        ct_size: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        carrier_tokens: bool = True,
        propagate: bool = False,
        pos_embed: bool = True,
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        if window_size < 1 or ct_size < 1:
            raise ValueError(f"HAT: window_size and ct_size must be at least 1, got {window_size} and {ct_size}")
        self.window_size = window_size
        self.ct_size = ct_size
        self.propagate = propagate
        hidden = int(dim * mlp_ratio)
        attention = dict(
            num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop,
            fused_attn=fused_attn,
        )
        self.pos_embed = MlpPositionEmbedding(dim) if pos_embed else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, **attention)
        self.norm2 = nn.LayerNorm(dim) if hidden else None
        self.mlp = Mlp(dim, hidden, drop=drop) if hidden else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma3 = _layer_scale(dim, layer_scale)
        self.gamma4 = _layer_scale(dim, layer_scale) if hidden else None
        self.carrier_tokens = carrier_tokens
        if carrier_tokens:
            self.hat_norm1 = nn.LayerNorm(dim)
            self.hat_attn = WindowAttention(dim, **attention)
            self.hat_norm2 = nn.LayerNorm(dim) if hidden else None
            self.hat_mlp = Mlp(dim, hidden, drop=drop) if hidden else None
            self.hat_pos_embed = MlpPositionEmbedding(dim) if pos_embed else None
            self.gamma1 = _layer_scale(dim, layer_scale)
            self.gamma2 = _layer_scale(dim, layer_scale) if hidden else None

    def _global_ct_attention(self, ct: torch.Tensor, ct_grid: tuple[int, int]) -> torch.Tensor:
        """Carrier tokens of one image attend to each other; ct in raster order (B, N_ct, C)."""
        if self.hat_pos_embed is not None:
            ct = ct + self.hat_pos_embed(ct_grid)
        ct = ct + self.drop_path(_scaled(self.hat_attn(self.hat_norm1(ct), ct_grid), self.gamma1))
        if self.hat_mlp is not None:
            ct = ct + self.drop_path(_scaled(self.hat_mlp(self.hat_norm2(ct)), self.gamma2))
        return ct

    def forward(
        self, x: torch.Tensor, ct: torch.Tensor | None, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B*nW, w*w, C) windows; ct: (B, N_ct, C) window-major or None; grid: (nWh, nWw)."""
        w, c = self.window_size, self.ct_size
        if self.pos_embed is not None:
            x = x + self.pos_embed((w, w))
        if ct is not None:
            ct = self._global_ct_attention(ct_to_raster(ct, grid, c), (grid[0] * c, grid[1] * c))
            x = torch.cat([ct_to_windows(ct, grid, c), x], dim=1)  # (B*nW, c*c + w*w, C)
        x = x + self.drop_path(_scaled(self.attn(self.norm1(x), (w, w)), self.gamma3))
        if self.mlp is not None:
            x = x + self.drop_path(_scaled(self.mlp(self.norm2(x)), self.gamma4))
        if ct is None:
            return x, None
        ct_w, x = x.split([c * c, w * w], dim=1)  # (B*nW, c*c, C), (B*nW, w*w, C)
        if self.propagate:
            x = x + _scaled(propagate_carrier_tokens(ct_w, c, (w, w)), self.gamma1)
        return x, ct_w.reshape(ct.shape)


def hat_blocks(
    dim: int,
    num_heads: int,
    window_size: int,
    drop_path: Sequence[float],
    propagate: bool,
    **block_args: Any,
) -> nn.ModuleList:
    """One `HATBlock` per drop-path rate; with `propagate`, the last one propagates its carrier tokens."""
    depth = len(drop_path)
    return nn.ModuleList(
        [
            HATBlock(dim, num_heads, window_size, drop_path=rate, propagate=propagate and i == depth - 1, **block_args)
            for i, rate in enumerate(drop_path)
        ]
    )


# --------------------------------------------------------------------------------------- the mechanism
def hierarchical_attention(
    x: torch.Tensor,
    blocks: Sequence[nn.Module],
    tokenizer: CarrierTokenInit | None,
    window_size: int,
    grad_checkpointing: bool = False,
) -> torch.Tensor:
    """HAT on a (B, C, H, W) map of any size -> (B, C, H, W) with channels-last strides.

    1. zero-pad at the bottom/right to window multiples;
    2. initialise c x c carrier tokens per window (`tokenizer`), unless the map fits in one window, which has no
       other window to exchange information with (then, as in the official code, no carrier tokens);
    3. run the HAT blocks on the windows and their carrier tokens (the carrier tokens persist from block to block);
    4. put the windows back together and crop the padding.
    """
    B, _, H, W = x.shape
    w = window_size
    x = pad_nchw(x, (w, w))  # (B, C, Hp, Wp)
    Hp, Wp = x.shape[2:]
    grid = (Hp // w, Wp // w)
    ct = None
    if tokenizer is not None and (grid[0] > 1 or grid[1] > 1):
        ct = tokenizer(x, grid, (w, w))  # (B, N_ct, C) window-major
    x = window_partition(x.permute(0, 2, 3, 1), (w, w))  # (B*nW, w*w, C)
    for blk in blocks:
        x, ct = call_block(blk, x, ct, grid, checkpointing=grad_checkpointing)
    x = window_reverse(x, (w, w), (Hp, Wp), B)  # (B, Hp, Wp, C)
    if not is_static(H, W):  # symbolic sizes: crop for every size, as `pad_nchw` pads
        return crop_nhwc(x, (H, W)).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
    x = x.permute(0, 3, 1, 2)  # (B, C, Hp, Wp), channels-last strides
    if (Hp, Wp) != (H, W):
        x = x[:, :, :H, :W].contiguous()  # (B, C, H, W)
    return x


class HAT2d(Attention2d):
    """Hierarchical attention (FasterViT) over a feature map of any H x W: the 2-D layer form of HAT.

    `hierarchical_attention` with `depth` HAT blocks. The defaults make a token mixer for other networks: one
    attention-only block (`mlp_ratio=0`) without FasterViT's absolute position MLPs (`pos_embed=False`: the host
    network brings its own position encoding; in the long-range ablation of docs/attention.md these MLPs, re-added
    in every block, kept a small network from learning anything across windows). HAT blocks are pre-norm residual
    blocks, so `residual` is True: use the layer as `x = layer(x)`, not `x + layer(norm(x))`.

    Args:
        dim: channels of input and output.
        num_heads: attention heads (window and carrier-token attention).
        window_size: side of the square windows.
        ct_size: carrier tokens per window side.
        depth: HAT blocks.
        mlp_ratio: hidden width of the blocks' MLPs relative to dim; 0 for attention-only blocks.
        qkv_bias: biases on the query/key/value projections.
        drop_path: stochastic depth, one rate for all blocks or one per block.
        layer_scale: initial value of the blocks' layer scales, or None for none.
        carrier_tokens: False gives plain window-attention blocks.
        propagate: the last block adds its carrier tokens back into the window tokens.
        pos_embed: FasterViT's absolute position MLPs in every block (window and carrier tokens).
        fused_attn: `F.scaled_dot_product_attention` instead of the plain matmul-softmax path.
        channels_last: (B, H, W, C) input and output if True, else (B, C, H, W).
    """

    native_channels_last = False
    residual = True

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        window_size: int = 7,
        ct_size: int = 2,
        depth: int = 1,
        mlp_ratio: float = 0.0,
        qkv_bias: bool = True,
        drop_path: float | Sequence[float] = 0.0,
        layer_scale: float | None = None,
        carrier_tokens: bool = True,
        propagate: bool = True,
        pos_embed: bool = False,
        fused_attn: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(dim, channels_last)
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        if len(rates) != depth:
            raise ValueError(f"HAT2d: {len(rates)} drop_path rates for depth={depth}")
        self.window_size = window_size
        self.blocks = hat_blocks(
            dim, num_heads, window_size, rates, propagate, ct_size=ct_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            layer_scale=layer_scale, carrier_tokens=carrier_tokens, pos_embed=pos_embed, fused_attn=fused_attn,
        )
        self.global_tokenizer = CarrierTokenInit(dim, ct_size) if carrier_tokens else None
        self.grad_checkpointing = False

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W) with channels-last strides."""
        return hierarchical_attention(x, self.blocks, self.global_tokenizer, self.window_size, self.grad_checkpointing)
