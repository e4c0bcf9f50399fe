"""Deformable convolution (v1) for CPU inference: bilinear sampling as one weighted gather, then one GEMM.

torchvision's CPU `deform_conv2d` builds its columns in a scalar loop: in LITv2-S at batch 32 it took a fifth of
the forward. Here every bilinear sample (kernel tap of an output position) is the weighted sum of four rows of the
channels-last input, which `F.embedding_bag(mode="sum", per_sample_weights=...)` computes in one vectorised pass
(the rows of a zero-padded map, so that neighbours off the map read zeros); the samples of an output position
are then one row of a (B*Ho*Wo, k*k*C) matrix, multiplied by the weight in one GEMM. The bilinear weights are
torchvision's (`h_low = floor(h)`, `lh = h - h_low`, products of `lh`, `1 - lh`, ...), including its rule that a
sample at or beyond one pixel off the map is zero, so the results differ from torchvision's only in the GEMM's
summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.litv2 import DeformConv2dPack
from .eager import eager_cpu_float32

__all__ = ["SampledDeformConv2d", "deform_conv2d_sampled"]


def _tap_positions(out: int, kernel: int, stride: int, padding: int, like: torch.Tensor) -> torch.Tensor:
    """(out, kernel) input positions of every tap of every output position along one axis, before offsets."""
    starts = torch.arange(out, device=like.device, dtype=like.dtype) * stride - padding  # (out,)
    return starts[:, None] + torch.arange(kernel, device=like.device, dtype=like.dtype)  # (out, kernel)


def deform_conv2d_sampled(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """`torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding)` for square kernels, no dilation,
    groups or mask; offsets (B, 2 * k * k, Ho, Wo) in torchvision's layout: per tap (row-major), y then x."""
    B, C, H, W = x.shape
    Cout, k = weight.shape[0], weight.shape[-1]
    Ho, Wo = offset.shape[-2:]
    off = offset.view(B, k, k, 2, Ho, Wo).permute(0, 4, 5, 1, 2, 3)  # (B, Ho, Wo, ki, kj, yx)
    rows = _tap_positions(Ho, k, stride, padding, x)[None, :, None, :, None]  # (1, Ho, 1, ki, 1)
    cols = _tap_positions(Wo, k, stride, padding, x)[None, None, :, None, :]  # (1, 1, Wo, 1, kj)
    h, w = rows + off[..., 0], cols + off[..., 1]  # (B, Ho, Wo, ki, kj) sample positions
    on_map = (h > -1) & (h < H) & (w > -1) & (w < W)
    h_low, w_low = h.floor(), w.floor()
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    weights = torch.stack([hh * hw, hh * lw, lh * hw, lh * lw], dim=-1) * on_map[..., None]  # (..., 4)
    # top-left neighbour in the map padded by one pixel on every side; clamped where on_map is False anyway
    Wp = W + 2
    top = (h_low.long() + 1).clamp(0, H)  # (B, Ho, Wo, ki, kj)
    left = (w_low.long() + 1).clamp(0, W)
    image = torch.arange(B, device=x.device)[:, None, None, None, None]  # (B, 1, 1, 1, 1)
    corner = (image * (H + 2) + top) * Wp + left  # (B, Ho, Wo, ki, kj) row of the padded map
    neighbours = torch.stack([corner, corner + 1, corner + Wp, corner + Wp + 1], dim=-1)  # (..., 4)
    pixels = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(B * (H + 2) * Wp, C)  # (B*(H+2)*(W+2), C)
    samples = F.embedding_bag(
        neighbours.view(-1, 4), pixels, per_sample_weights=weights.view(-1, 4), mode="sum"
    )  # (B*Ho*Wo*k*k, C)
    taps = samples.view(B * Ho * Wo, k * k * C)  # one row per output position: (ki, kj, C)
    kernel = weight.permute(0, 2, 3, 1).reshape(Cout, k * k * C)  # (Cout, (ki, kj, C))
    out = taps @ kernel.T if bias is None else torch.addmm(bias, taps, kernel.T)  # (B*Ho*Wo, Cout)
    return out.view(B, Ho, Wo, Cout).permute(0, 3, 1, 2)  # (B, Cout, Ho, Wo), channels-last strides


class SampledDeformConv2d(nn.Module):
    """LITv2's `DeformConv2dPack` with frozen weights, on `deform_conv2d_sampled` for float32 CPU inputs (1.1-4.3x
    faster than torchvision's CPU kernel in LITv2) and on the plain module elsewhere (other devices and dtypes, graph
    capture: ONNX exports torchvision's op as `DeformConv`)."""

    def __init__(self, source: DeformConv2dPack) -> None:
        super().__init__()
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not eager_cpu_float32(x):
            return self.source(x)
        offset = self.source.conv_offset(x)  # (B, 2*k*k, Ho, Wo)
        return deform_conv2d_sampled(x, offset, self.source.weight, self.source.bias, self.source.stride,
                                     self.source.padding)
