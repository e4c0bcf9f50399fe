"""The one interface of fastvits' 2-D token-mixing layers: a feature map in, a map of the same shape out.

Every layer built by `create_attention2d` (global, window, spatial-reduction, HiLo and HAT attention)
takes a map of any H x W, square or not, with sides that need not be multiples of its window or
pooling size (each layer pads internally and crops back), and returns a map of the same shape.

The layout is fixed when the layer is built, so that forward never guesses it from the shape:
- `channels_last=False`: (B, C, H, W), the layout of convolutional backbones;
- `channels_last=True`: (B, H, W, C), the layout of transformer blocks (timm's Swin; (B, N, C) tokens in
  row-major order are such a map viewed flat).
Each layer computes in its native layout (`native_channels_last`); the other layout costs two permutes,
which are views, so the output then has the strides of the native layout.

Layers are token mixers, used as `x + layer(norm(x))`, except those with `residual = True` (HAT): their
carrier tokens are a residual stream of their own inside the layer, so the layer normalises its input
itself and returns the updated map, residual included.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .inference_form import InferenceForm

__all__ = ["Attention2d"]


class Attention2d(InferenceForm, nn.Module):
    """Base class: layout conversion and input checks around `forward_map` (the native-layout computation).

    Args:
        dim: channels of input and output.
        channels_last: the layout of input and output, (B, H, W, C) if True, else (B, C, H, W).
    """

    native_channels_last: ClassVar[bool] = True
    residual: ClassVar[bool] = False

    def __init__(self, dim: int, channels_last: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.channels_last = channels_last

    @property
    def layout(self) -> str:
        return "(B, H, W, C)" if self.channels_last else "(B, C, H, W)"

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on a map in its native layout; returns the same layout and shape."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(f"{name} expects a map {self.layout}, got shape {tuple(x.shape)}")
        C, other = (x.shape[-1], x.shape[1]) if self.channels_last else (x.shape[1], x.shape[-1])
        if C != self.dim:
            hint = ""
            if other == self.dim:
                hint = f"; for the other layout build it with channels_last={not self.channels_last}"
            raise ValueError(f"{name}(dim={self.dim}) got a {self.layout} map with C={C}, shape {tuple(x.shape)}{hint}")
        if self.channels_last == self.native_channels_last:
            return self.forward_map(x)
        if self.native_channels_last:
            return self.forward_map(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # via (B, H, W, C) views
        return self.forward_map(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # via (B, C, H, W) views
