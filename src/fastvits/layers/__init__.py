"""Reusable layers: attention, window layouts, position encodings, and the 2-D attention layers.

The 2-D attention layers (global, window, spatial-reduction, HiLo, HAT) share one interface (`Attention2d`: a
feature map in, the same shape out, either layout); `create_attention2d` builds them by name. Every layer is plain
PyTorch; `fastvits.optimize_for_inference` is where inference speed-ups are applied.
"""

from .attention import Attention, AttentionProjections, attend, cross_attention, multi_head_attention
from .attention2d import Attention2d
from .factory import ATTENTION_2D, create_attention2d
from .global_attention import GlobalAttention2d
from .grad_checkpoint import call_block
from .hat import (
    CarrierTokenInit,
    HAT2d,
    HATBlock,
    WindowAttention,
    ct_pool_geometry,
    ct_to_raster,
    ct_to_windows,
    hat_blocks,
    hierarchical_attention,
    propagate_carrier_tokens,
)
from .hilo import HiLo, hilo_head_split
from .pos_embed import ContinuousRelativeBias, MlpPositionEmbedding, gather_relative_bias, prepend_zero_bias
from .sra import SpatialReductionAttention2d
from .window_attention import WindowAttention2d
from .windows import (
    crop_nhwc,
    is_static,
    pad_amount,
    pad_nchw,
    pad_nhwc,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "ATTENTION_2D",
    "Attention",
    "Attention2d",
    "AttentionProjections",
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
    "call_block",
    "create_attention2d",
    "crop_nhwc",
    "cross_attention",
    "ct_pool_geometry",
    "ct_to_raster",
    "ct_to_windows",
    "gather_relative_bias",
    "hat_blocks",
    "hierarchical_attention",
    "hilo_head_split",
    "is_static",
    "multi_head_attention",
    "pad_amount",
    "pad_nchw",
    "pad_nhwc",
    "prepend_zero_bias",
    "propagate_carrier_tokens",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
