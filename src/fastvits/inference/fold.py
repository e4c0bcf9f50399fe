"""Folding: per-channel affine maps at inference (eval-mode BatchNorm, layer scales) merged into the weights of the
convolution or linear map in front of them, so the model skips one full read and write of the feature map.

A deformable convolution is linear in its weight (its sampling offsets come from the input alone), so a BatchNorm
after it folds into it exactly as into a regular convolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["fold_batchnorm", "fold_scale", "folded_conv"]


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight (C_out, ...) and bias of a linear map followed by `bn` in eval mode, as one map."""
    if bn.training:
        raise RuntimeError("BatchNorm folding uses the running statistics: call .eval() first")
    return fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def fold_scale(layer: nn.Linear | nn.Conv2d, scale: torch.Tensor) -> None:
    """Scale the outputs of `layer` per channel, `scale` (C_out,), by scaling its weight rows and bias in place."""
    with torch.no_grad():
        layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))  # (C_out, 1, ...)
        if layer.bias is not None:
            layer.bias.mul_(scale)


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, scale: torch.Tensor | None = None) -> nn.Conv2d:
    """`conv`, then `bn` (eval mode), then a per-channel `scale` (C_out,) such as a layer scale, as one new
    convolution with a bias; `conv` itself is not changed."""
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=True, padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
    )
    weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
    if bn is not None:
        weight, bias = fold_batchnorm(weight, bias, bn)
    folded.weight = nn.Parameter(weight.detach().clone())
    folded.bias = nn.Parameter(bias.detach().clone() if bias is not None else weight.new_zeros(conv.out_channels))
    if scale is not None:
        fold_scale(folded, scale.detach())
    return folded
