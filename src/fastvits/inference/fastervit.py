"""Inference forms of FasterViT's convolutional parts: BatchNorm and layer scale folded, oneDNN convolutions on
channels-last maps with GELU, ReLU and the residual add fused."""

from __future__ import annotations

import torch
from torch import nn

from ..models.fastervit import ConvBlock, Downsample, Stem
from .engine import InferenceOptions, converts
from .fold import folded_conv
from .onednn import PackedConv2d

__all__ = ["PackedConvBlock"]


class PackedConvBlock(nn.Module):
    """`ConvBlock` at inference: conv1 + BN + GELU one oneDNN kernel, conv2 + BN + layer scale + residual another."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d) -> None:
        super().__init__()
        self.conv1 = PackedConv2d(conv1, act="gelu")
        self.conv2 = PackedConv2d(conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x), residual=x)


@converts(ConvBlock)
def _conv_block(block: ConvBlock, options: InferenceOptions) -> nn.Module:
    if isinstance(block.norm1, nn.BatchNorm2d):
        conv1 = folded_conv(block.conv1, block.norm1)
        conv2 = folded_conv(block.conv2, block.norm2, block.gamma)
    else:  # folded already (an inference form for graphs, converted again)
        conv1, conv2 = block.conv1, block.conv2
    if options.cpu_kernels:
        return PackedConvBlock(conv1, conv2)
    block.conv1, block.conv2 = conv1, conv2
    block.norm1, block.norm2, block.gamma = nn.Identity(), nn.Identity(), None
    return block


@converts(Stem)
def _stem(stem: Stem, options: InferenceOptions) -> nn.Module:
    """conv, BN, ReLU twice -> two convolutions with the BatchNorms folded (and ReLU fused)."""
    layers = list(stem.conv_down)
    if not any(isinstance(m, nn.BatchNorm2d) for m in layers):  # converted already
        return stem
    convs = [folded_conv(conv, bn) for conv, bn in zip(layers[0::3], layers[1::3])]
    if options.cpu_kernels:
        stem.conv_down = nn.Sequential(*(PackedConv2d(conv, act="relu") for conv in convs))
    else:
        stem.conv_down = nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU())
    return stem


@converts(Downsample)
def _downsample(down: Downsample, options: InferenceOptions) -> nn.Module:
    if options.cpu_kernels and type(down.reduction[0]) is nn.Conv2d:
        down.reduction = nn.Sequential(PackedConv2d(down.reduction[0]))
    return down
