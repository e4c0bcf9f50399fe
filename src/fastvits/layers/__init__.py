"""Reusable layers: attention kernels, window layouts, position encodings, HAT, HiLo."""

from .attention import Attention, attend, fused_attn, set_fused_attn, use_fused_attn
from .cache import CachedByInput, is_exporting
from .hat import CarrierTokenInit, HATBlock, WindowAttention, ct_pool_geometry, ct_to_raster, ct_to_windows
from .hilo import HiLo, hilo_head_split
from .pos_embed import ContinuousRelativeBias, MlpPositionEmbedding
from .windows import pad_amount, pad_nchw, pad_nhwc, window_partition, window_reverse

__all__ = [
    "Attention",
    "CachedByInput",
    "CarrierTokenInit",
    "ContinuousRelativeBias",
    "HATBlock",
    "HiLo",
    "MlpPositionEmbedding",
    "WindowAttention",
    "attend",
    "ct_pool_geometry",
    "ct_to_raster",
    "ct_to_windows",
    "fused_attn",
    "hilo_head_split",
    "is_exporting",
    "pad_amount",
    "pad_nchw",
    "pad_nhwc",
    "set_fused_attn",
    "use_fused_attn",
    "window_partition",
    "window_reverse",
]
