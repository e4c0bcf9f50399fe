"""Build a 2-D attention layer by name: the registry the attention benchmark and the ablation iterate over.

Every entry takes (dim, num_heads, **kwargs) and returns an `Attention2d` (a map in, the same shape out).
"""

from __future__ import annotations

from typing import Any

from .attention2d import Attention2d
from .global_attention import GlobalAttention2d
from .hat import HAT2d
from .hilo import HiLo
from .sra import SpatialReductionAttention2d
from .window_attention import WindowAttention2d

__all__ = ["ATTENTION_2D", "create_attention2d"]

ATTENTION_2D: dict[str, type[Attention2d]] = {
    "global": GlobalAttention2d,  # ViT's MSA
    "window": WindowAttention2d,  # Swin's (S)W-MSA
    "sra": SpatialReductionAttention2d,  # PVT
    "hilo": HiLo,  # LITv2
    "hat": HAT2d,  # FasterViT
}


def create_attention2d(kind: str, dim: int, num_heads: int, **kwargs: Any) -> Attention2d:
    """An attention layer of the given kind, e.g. `create_attention2d("window", 96, 3, window_size=7)`.

    kwargs go to the layer's constructor (`channels_last` is accepted by every kind).
    """
    try:
        cls = ATTENTION_2D[kind]
    except KeyError:
        raise ValueError(f"unknown attention kind {kind!r}; choose from {', '.join(ATTENTION_2D)}") from None
    return cls(dim, num_heads, **kwargs)
