"""MLP position encodings of FasterViT (SwinV2-style continuous position bias), computed in forward.

Both encodings are functions of the grid size only, so one module serves every input size: the grid is derived
from the actual input at run time, as the official code computes them from its construction size. On square grids
they reproduce the official tables bit for bit; on rectangular grids each axis is normalised by its own extent (the
official code has no rectangular case). `fastvits.optimize_for_inference` turns them into per-size buffers.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ContinuousRelativeBias",
    "MlpPositionEmbedding",
    "gather_relative_bias",
    "prepend_zero_bias",
    "relative_coords_table",
    "relative_position_index",
]


def relative_coords_table(h: int, w: int, device: torch.device) -> torch.Tensor:
    """((2h-1) * (2w-1), 2) log-spaced relative coordinates (row offset, column offset)."""
    dh = torch.arange(-(h - 1), h, dtype=torch.float32, device=device)
    dw = torch.arange(-(w - 1), w, dtype=torch.float32, device=device)
    table = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1)  # (2h-1, 2w-1, 2)
    table[..., 0] /= max(h - 1, 1)
    table[..., 1] /= max(w - 1, 1)
    table *= 8
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / 3.0  # log2(8) = 3
    return table.reshape(-1, 2)  # ((2h-1)*(2w-1), 2)


def relative_position_index(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h*w, h*w) index into the coordinate table for every (query, key) pair, row-major tokens."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ).flatten(1)  # (2, h*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (h*w, h*w, 2)
    return (rel[..., 0] + h - 1) * (2 * w - 1) + (rel[..., 1] + w - 1)


def gather_relative_bias(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(heads, h*w, h*w) bias of every (query, key) pair of an h x w grid from a ((2h-1)*(2w-1), heads) table.

    The table is indexed by relative offset as in Swin (`relative_position_index`), so Swin's learned tables
    (timm's `relative_position_bias_table`) and FasterViT's MLP-generated ones share this lookup.
    """
    n = grid[0] * grid[1]
    index = relative_position_index(grid[0], grid[1], table.device)
    return table[index.view(-1)].view(n, n, table.shape[1]).permute(2, 0, 1)  # (heads, n, n)


def prepend_zero_bias(bias: torch.Tensor, extra: int) -> torch.Tensor:
    """(..., n, n) bias -> (..., extra + n, extra + n), the new rows and columns first and zero.

    Tokens put in front of a grid's tokens (carrier tokens) have no position on the grid, so no bias.
    """
    return nn.functional.pad(bias, (extra, 0, extra, 0)) if extra else bias


class ContinuousRelativeBias(nn.Module):
    """Per-head attention bias `16 * sigmoid(MLP(log-spaced relative coordinates))` for an h x w grid.

    `seq_len` larger than h*w prepends tokens with zero bias (FasterViT's carrier tokens in front of each window).
    """

    def __init__(self, num_heads: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, hidden_dim, bias=True), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_heads, bias=False)
        )

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        """((2h-1)*(2w-1), heads): the bias of every relative offset on the grid."""
        weight = self.cpb_mlp[0].weight
        coords = relative_coords_table(grid[0], grid[1], weight.device).to(weight.dtype)
        return 16 * torch.sigmoid(self.cpb_mlp(coords))

    def forward(self, grid: tuple[int, int], seq_len: int) -> torch.Tensor:
        """(1, heads, seq_len, seq_len) bias; the first seq_len - h*w tokens (carrier tokens) get zero bias."""
        bias = gather_relative_bias(self.table(grid), grid)  # (heads, h*w, h*w)
        return prepend_zero_bias(bias, seq_len - grid[0] * grid[1]).unsqueeze(0)  # (1, heads, N, N)


class MlpPositionEmbedding(nn.Module):
    """Absolute position embedding `MLP(normalised (row, col))` for an h x w token grid -> (1, h*w, dim).

    Coordinates are `(a - n//2) / (n//2)` per axis.
    """

    def __init__(self, dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, hidden_dim, bias=True), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim, bias=False)
        )

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        weight = self.cpb_mlp[0].weight
        axes = []
        for n in grid:
            a = torch.arange(0, n, device=weight.device, dtype=weight.dtype)
            a -= n // 2
            a /= max(n // 2, 1)
            axes.append(a)
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)  # (1, 2, h, w)
        return self.cpb_mlp(coords.flatten(2).transpose(1, 2))  # (1, h*w, dim)
