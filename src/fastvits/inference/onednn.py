"""oneDNN kernels for CPU inference: a convolution or linear map and what follows it in one pass over the data.

On a CPU the conv stages and MLPs of these models spend as much time reading and writing feature maps (BatchNorm,
GELU, residual adds, layout reorders) as computing, and at batch 1 the transformer stages multiply few-row
matrices, where a weight packed in advance runs up to 1.8x faster than a plain GEMM. The modules here take the
folded weights of a plain layer and run:
- convolutions on channels-last maps with the weight packed once into oneDNN's blocked layout (chosen for the first
  input met), GELU as a post-op and the residual add as a binary post-op; ReLU runs after the kernel, in place,
  because oneDNN's ReLU post-op turns NaN into 0 where torch's keeps it;
- linears of at most `PACKED_ROWS` rows on a weight packed for oneDNN, GELU as a post-op; more rows through MKL's
  GEMM, except with few input features (`ONEDNN_MAX_IN_FEATURES`), where oneDNN is faster.

They serve float32 CPU inputs outside autocast and outside graph capture (`runs_onednn`); anything else (another
device or dtype, torch.compile, torch.export, ONNX export) takes the same math in plain torch ops on the same folded
weights, so a model optimized for eager inference can still be compiled or exported. Packed weights are copies
(about 90% of a model's parameter bytes after a batch-1 forward) that deep copies and pickles leave out; they are
packed again on first use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .eager import eager_cpu_float32

__all__ = [
    "ONEDNN_AVAILABLE",
    "ONEDNN_MAX_IN_FEATURES",
    "PACKED_ROWS",
    "PackedConv2d",
    "PackedLinear",
    "runs_onednn",
]

ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")

PACKED_ROWS = 512
"""Linears of at most this many rows (tokens) run on oneDNN-packed weights: up to 1.8x faster on 49-row inputs (a
FasterViT stage 4 at batch 1), no gain from about 1,000 rows on (docs/benchmarks.md)."""

ONEDNN_MAX_IN_FEATURES = 192
"""Plain linears on more than `PACKED_ROWS` rows run through MKL's GEMM, except those of at most this many input
features: with so few, MKL's pass that writes the bias into the output first weighs, and oneDNN (bias in the kernel)
was 1.04-1.5x faster (LITv2's stage-1/2 fc1 at batch 32; docs/benchmarks.md)."""

ACTIVATIONS = ("none", "relu", "gelu")
_POST_OP = {"none": "none", "relu": "none", "gelu": "gelu"}  # ReLU runs after the kernel (NaN stays NaN)
_ALGORITHM = {"none": "", "relu": "", "gelu": "none"}  # "none": exact (erf) GELU, as nn.GELU()
_PLAIN_ACT = {"none": lambda y: y, "relu": F.relu, "gelu": F.gelu}


def runs_onednn(x: torch.Tensor) -> bool:
    """Whether `x` takes the oneDNN kernels: a float32 CPU tensor, outside autocast and graph capture."""
    return ONEDNN_AVAILABLE and eager_cpu_float32(x)


def _relu_after(y: torch.Tensor, act: str) -> torch.Tensor:
    return y.relu_() if act == "relu" else y


class _Packed(nn.Module):
    """A module with a lazily packed copy of its weight, left out of deep copies and pickles (oneDNN's opaque
    tensors have no storage to copy)."""

    def __init__(self) -> None:
        super().__init__()
        self._packed: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_packed": None}


class PackedConv2d(_Packed):
    """`act(conv(x))`, or `conv(x) + residual`, of a plain `nn.Conv2d` (its weight and bias, BatchNorm folded in
    by the caller) on channels-last maps, the weight packed for the first input size met; output channels-last.

    Args:
        conv: the convolution (zero padding, numeric padding); its parameters are taken over, frozen.
        act: "none", "relu" or "gelu" (exact).
    """

    def __init__(self, conv: nn.Conv2d, act: str = "none") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"PackedConv2d: act must be one of {ACTIVATIONS}, got {act!r}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("PackedConv2d takes zero-padded convolutions with numeric padding")
        self.weight = conv.weight
        self.bias = conv.bias if conv.bias is not None else nn.Parameter(conv.weight.new_zeros(conv.out_channels))
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.act = act

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={self.stride}, act={self.act}, frozen"

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        return list(self.padding), list(self.stride), list(self.dilation), self.groups

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if not runs_onednn(x):
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            return _PLAIN_ACT[self.act](y) if residual is None else y + residual
        x = x.contiguous(memory_format=torch.channels_last)
        if self._packed is None:
            self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(), *self._geometry(), list(x.shape)
            )
        ops = torch.ops.mkldnn._convolution_pointwise
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last)
            return ops.binary(x, residual, self._packed, self.bias, *self._geometry(), "add", 1.0, None, [], None)
        y = ops.default(x, self._packed, self.bias, *self._geometry(), _POST_OP[self.act], [], _ALGORITHM[self.act])
        return _relu_after(y, self.act)


class PackedLinear(_Packed):
    """`act(x W^T + b)` of a plain `nn.Linear`: oneDNN on a packed weight for few rows, MKL or oneDNN for many.

    Args:
        linear: the linear map; its parameters are taken over, frozen.
        act: "none", "relu" or "gelu" (exact).
    """

    def __init__(self, linear: nn.Linear, act: str = "none") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"PackedLinear: act must be one of {ACTIVATIONS}, got {act!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.act = act

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act}, frozen"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not runs_onednn(x):
            return _PLAIN_ACT[self.act](F.linear(x, self.weight, self.bias))
        few_rows = x.numel() <= PACKED_ROWS * self.in_features
        if self.act == "none" and not few_rows and self.in_features > ONEDNN_MAX_IN_FEATURES:
            return F.linear(x, self.weight, self.bias)  # MKL, as fast as oneDNN on many rows
        weight = self.weight
        if few_rows:
            if self._packed is None:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACKED_ROWS)
            weight = self._packed
        y = torch.ops.mkldnn._linear_pointwise.default(
            x.contiguous(), weight, self.bias, _POST_OP[self.act], [], _ALGORITHM[self.act]
        )
        return _relu_after(y, self.act)
