"""Position encodings of an inference-only model: computed once per input size and kept as buffers.

FasterViT's position biases and embeddings are MLPs of the grid size only. A plain model runs them in every forward,
as the official code does; with frozen weights their outputs are constants of the size, as in the official deploy
mode. `SizeTable` keeps them in an explicit, bounded table: one buffer per size met, up to `max_sizes` per layer
(further sizes are computed per call, so an unbounded stream of sizes, a detector's, cannot grow memory). Under
`torch.compile` a size already in the table is read (with inductor freezing it becomes a graph constant); a size
not in it, or a symbolic size, is computed in the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import nn

from ..layers import ContinuousRelativeBias, MlpPositionEmbedding, gather_relative_bias, is_static, prepend_zero_bias

__all__ = ["FULL_BIAS_LIMIT", "FrozenPositionEmbedding", "FrozenRelativeBias", "SizeTable"]

FULL_BIAS_LIMIT = 1 << 20
"""Relative biases of up to this many elements (heads x N x N) are kept whole; larger ones (the 21K models' 48x48
windows: 16 x 2304 x 2304, 340 MB per block) keep the compact per-offset table and gather the bias in every call."""


class SizeTable(nn.Module):
    """Buffers computed per input size, in a table of at most `max_sizes` entries."""

    def __init__(self, max_sizes: int) -> None:
        super().__init__()
        if max_sizes < 0:
            raise ValueError(f"max_sizes must be >= 0, got {max_sizes}")
        self.max_sizes = max_sizes
        self.sizes: dict[Hashable, str] = {}  # size -> buffer name

    def lookup(self, size: tuple[int, ...], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The buffer of `size`, computed by `compute()` and stored on first use while the table has room."""
        if not is_static(*size):  # symbolic sizes (torch.compile(dynamic=True)): in the graph
            return compute()
        key = tuple(int(n) for n in size)
        name = self.sizes.get(key)
        if name is not None:
            return getattr(self, name)
        value = compute()
        if len(self.sizes) < self.max_sizes and not torch.compiler.is_compiling():
            name = "size_" + "_".join(map(str, key))
            self.register_buffer(name, value.detach(), persistent=False)
            self.sizes[key] = name
        return value

    def extra_repr(self) -> str:
        return f"sizes={sorted(self.sizes)}, max_sizes={self.max_sizes}, frozen"


class FrozenRelativeBias(SizeTable):
    """`ContinuousRelativeBias` with frozen weights: the (1, heads, N, N) bias per (grid, sequence length)."""

    def __init__(self, source: ContinuousRelativeBias, max_sizes: int) -> None:
        super().__init__(max_sizes)
        self.num_heads = source.num_heads
        self.source = source  # computes what the table does not hold

    def forward(self, grid: tuple[int, int], seq_len: int) -> torch.Tensor:
        if not is_static(*grid, seq_len):
            return self.source(grid, seq_len)
        if self.num_heads * seq_len * seq_len <= FULL_BIAS_LIMIT:
            return self.lookup((*grid, seq_len), lambda: self.source(grid, seq_len))
        table = self.lookup(tuple(grid), lambda: self.source.table(grid))  # ((2h-1)*(2w-1), heads)
        bias = gather_relative_bias(table, grid)  # (heads, h*w, h*w)
        return prepend_zero_bias(bias, seq_len - grid[0] * grid[1]).unsqueeze(0)  # (1, heads, N, N)


class FrozenPositionEmbedding(SizeTable):
    """`MlpPositionEmbedding` with frozen weights: the (1, h*w, dim) embedding per grid."""

    def __init__(self, source: MlpPositionEmbedding, max_sizes: int) -> None:
        super().__init__(max_sizes)
        self.source = source  # computes what the table does not hold

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        return self.lookup(tuple(grid), lambda: self.source(grid))
