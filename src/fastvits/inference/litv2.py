"""Inference forms of LITv2's ConvFFN and token merging: the depthwise conv and GELU one oneDNN kernel, the
BatchNorm after the deformable conv folded into it, and the deformable conv as one gather and one GEMM."""

from __future__ import annotations

import torch
from torch import nn

from ..models.litv2 import ConvFFN, DeformableTokenMerging, map_to_tokens, tokens_to_map
from .deform import SampledDeformConv2d
from .engine import InferenceOptions, converts
from .fold import fold_batchnorm
from .onednn import PackedConv2d, PackedLinear

__all__ = ["PackedConvFFN"]


class PackedConvFFN(nn.Module):
    """`ConvFFN` at inference: fc1, the depthwise conv + GELU on the channels-last map, fc2, each one kernel."""

    def __init__(self, ffn: ConvFFN) -> None:
        super().__init__()
        self.fc1 = PackedLinear(ffn.fc1)
        self.dwconv = PackedConv2d(ffn.dwconv, act="gelu")
        self.fc2 = PackedLinear(ffn.fc2)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x: (B, H*W, C) tokens -> (B, H*W, C)."""
        h = self.dwconv(tokens_to_map(self.fc1(x), H, W))  # (B, hidden, H, W) channels-last
        return self.fc2(map_to_tokens(h))  # (B, H*W, C)


@converts(ConvFFN)
def _conv_ffn(ffn: ConvFFN, options: InferenceOptions) -> nn.Module:
    return PackedConvFFN(ffn) if options.cpu_kernels else ffn


@converts(DeformableTokenMerging)
def _token_merging(dtm: DeformableTokenMerging, options: InferenceOptions) -> nn.Module:
    if not isinstance(dtm.norm, nn.BatchNorm2d):  # converted already
        return dtm
    dconv = dtm.dconv
    dconv.weight, dconv.bias = fold_batchnorm(dconv.weight.detach(), dconv.bias.detach(), dtm.norm)
    dtm.norm = nn.Identity()
    if options.cpu_kernels:
        dtm.dconv = SampledDeformConv2d(dconv)
    return dtm
