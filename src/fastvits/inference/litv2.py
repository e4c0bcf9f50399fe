"""Inference forms of LITv2's ConvFFN and token merging: the depthwise conv and GELU one oneDNN kernel, the
BatchNorm after the deformable conv folded into it, and the deformable conv as one gather and one GEMM.

Exported graphs (runtime "export") get `MapConvFFN`: the ConvFFN on the (B, C, H, W) map, its linears as 1x1
convolutions, so that the graph turns tokens into a map and back once per block on C channels instead of around the
depthwise conv on the 4C hidden channels (ONNX Runtime and OpenVINO copy the data at every such transpose: in
OpenVINO's int8 LITv2-S at batch 32 the transposes and reorders took half the time).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.litv2 import ConvFFN, DeformableTokenMerging, map_to_tokens, tokens_to_map
from .deform import SampledDeformConv2d
from .engine import InferenceOptions, converts
from .fold import fold_batchnorm
from .onednn import PackedConv2d, PackedLinear

__all__ = ["MapConvFFN", "PackedConvFFN"]


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


def _pointwise_conv(linear: nn.Linear) -> nn.Conv2d:
    """The 1x1 convolution that computes `linear` on every position of a (B, C, H, W) map."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None)
    conv.weight = nn.Parameter(linear.weight.detach().view(*linear.weight.shape, 1, 1))  # (out, in, 1, 1)
    if linear.bias is not None:
        conv.bias = linear.bias
    return conv


class MapConvFFN(nn.Module):
    """`ConvFFN` for exported graphs: 1x1 conv, depthwise conv, GELU, 1x1 conv, all on the (B, C, H, W) map."""

    def __init__(self, ffn: ConvFFN) -> None:
        super().__init__()
        self.fc1 = _pointwise_conv(ffn.fc1)
        self.dwconv = ffn.dwconv
        self.act = ffn.act
        self.fc2 = _pointwise_conv(ffn.fc2)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x: (B, H*W, C) tokens -> (B, H*W, C)."""
        h = self.act(self.dwconv(self.fc1(tokens_to_map(x, H, W))))  # (B, hidden, H, W)
        return map_to_tokens(self.fc2(h))  # (B, H*W, C)


@converts(ConvFFN)
def _conv_ffn(ffn: ConvFFN, options: InferenceOptions) -> nn.Module:
    if options.cpu_kernels:
        return PackedConvFFN(ffn)
    return MapConvFFN(ffn) if options.runtime == "export" else ffn


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
