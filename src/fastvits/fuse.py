"""Inference-time folding: BatchNorm (and a following layer scale) merged into the preceding convolution.

In eval mode a BatchNorm is a per-channel affine map, so it can be absorbed into the weights and bias of the
convolution in front of it; the model then skips one full read and write of every conv-stage feature map.
Modules that can fold expose `fuse()` (timm's convention: it returns the module to put in their place), so
`timm.utils.reparameterize_model` and `fastvits bench --backend eager+reparam` fold fastvits models too.

A folded model is for inference only: its BatchNorms are gone, so training it or loading a checkpoint
into it is refused by the missing keys. Fold a copy with `optimize_for_inference`.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from timm.utils.model import reparameterize_model
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["fold_bn_into_weights", "folded_conv", "optimize_for_inference"]

M = TypeVar("M", bound=nn.Module)


def fold_bn_into_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight (C_out, ...) and bias of a linear map followed by `bn` in eval mode, as one map."""
    if bn.training:
        raise RuntimeError("BatchNorm folding uses the running statistics: call .eval() before fuse()")
    return fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def folded_conv(
    conv: nn.Conv2d, bn: nn.Module, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `conv`, then `bn` (an eval-mode BatchNorm2d, or Identity once folded), then an optional
    per-channel `scale` (C_out,) such as a layer scale, as one convolution. Detached tensors."""
    weight, bias = conv.weight, conv.bias
    if isinstance(bn, nn.BatchNorm2d):
        weight, bias = fold_bn_into_weights(weight, bias, bn)
    elif bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if scale is not None:
        weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))  # (C_out, 1, 1, 1)
        bias = bias * scale
    return weight.detach(), bias.detach()


def optimize_for_inference(model: M) -> M:
    """An eval-mode copy of `model` with every foldable BatchNorm folded; `model` itself is not changed.

    The result computes the same function up to float rounding (tested against the unfolded model). It is
    inference-only: before `torch.compile`, run it once in eager mode at each input size, and the compiled graph
    reads the position biases cached there instead of recomputing their MLPs.
    """
    return reparameterize_model(copy.deepcopy(model).eval(), inplace=True)
