"""Reusable layers: attention kernels, window layouts, position encodings, and the 2-D attention layers.

The 2-D attention layers (global, window, spatial-reduction, HiLo, HAT) share one interface
(`Attention2d`: a feature map in, the same shape out, either layout); `create_attention2d` builds them by name.
"""

from .attention import (
    Attention,
    attend,
    cross_attention,
    fused_attn,
    multi_head_attention,
    set_fused_attn,
    use_fused_attn,
)
from .attention2d import Attention2d
from .cache import CachedByInput, is_exporting
from .factory import ATTENTION_2D, create_attention2d
from .fused import fused_kernels
from .global_attention import GlobalAttention2d
from .hat import (
    CarrierTokenInit,
    HAT2d,
    HATBlock,
    WindowAttention,
    ct_pool_geometry,
    ct_to_raster,
    ct_to_windows,
    propagate_carrier_tokens,
)
from .hilo import HiLo, hilo_head_split
from .pos_embed import ContinuousRelativeBias, MlpPositionEmbedding, gather_relative_bias, prepend_zero_bias
from .sra import SpatialReductionAttention2d
from .window_attention import WindowAttention2d
from .windows import crop_nhwc, pad_amount, pad_nchw, pad_nhwc, shifted_window_mask, window_partition, window_reverse

__all__ = [
    "ATTENTION_2D",
    "Attention",
    "Attention2d",
    "CachedByInput",
    "CarrierTokenInit",
    "ContinuousRelativeBias",
    "GlobalAttention2d",
    "HAT2d",
    "HATBlock",
    "HiLo",
    "MlpPositionEmbedding",
    "SpatialReductionAttention2d",
    "WindowAttention",
    "WindowAttention2d",
    "attend",
    "create_attention2d",
    "crop_nhwc",
    "cross_attention",
    "ct_pool_geometry",
    "ct_to_raster",
    "ct_to_windows",
    "fused_attn",
    "fused_kernels",
    "gather_relative_bias",
    "hilo_head_split",
    "is_exporting",
    "multi_head_attention",
    "pad_amount",
    "pad_nchw",
    "pad_nhwc",
    "prepend_zero_bias",
    "propagate_carrier_tokens",
    "set_fused_attn",
    "shifted_window_mask",
    "use_fused_attn",
    "window_partition",
    "window_reverse",
]
