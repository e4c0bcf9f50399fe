"""Fused CPU inference kernels: a convolution or linear map and what follows it (bias, activation, residual
add) in one oneDNN pass over the data, on weights laid out once for oneDNN.

On a CPU the conv stages and MLPs of these models spend as much time reading and writing feature maps
(BatchNorm, GELU, residual adds, layout reorders) as computing, and at batch 1 the transformer stages multiply
few-row matrices, where a weight packed in advance runs up to 1.8x faster than a plain GEMM. In eval mode,
without autograd, in float32, with oneDNN present, fastvits layers route through the kernels below: BatchNorm
(and layer scale) folded into the convolution's weights, conv weights packed into oneDNN's blocked layout,
GELU and the residual add applied as oneDNN post-ops (ReLU in place after the kernel, which keeps NaN visible),
feature maps kept channels-last; linears of at most
`PACKED_ROWS` rows run on packed weights. Folded and packed weights are cached copies (refreshed when a weight
changes): at batch 1 they add about 90% of a model's parameter bytes. The result equals the plain path to
float32 rounding (tested); training, autocast, other dtypes and devices, and graph capture (torch.compile, ONNX
export, which do their own fusion) take the plain path. `with fused_kernels(False):` (or FASTVITS_FUSED_KERNELS=0)
turns the fast path off everywhere, e.g. for the op-for-op parity checks against the official code or to save
the memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cache import CachedByInput, is_exporting
from .switch import Switch

__all__ = [
    "Conv2d",
    "Linear",
    "Mlp",
    "ONEDNN_MAX_IN_FEATURES",
    "PACKED_ROWS",
    "conv2d_fused",
    "fusable",
    "fused_kernels",
    "pack_conv_weight",
]

fused_kernels = Switch("FASTVITS_FUSED_KERNELS")
"""On/off for the whole fast path: `with fused_kernels(False): ...`, `fused_kernels.set(False)`, `.enabled`."""
_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_ALGORITHM = {"none": "", "relu": "", "gelu": "none"}  # "none": exact (erf) GELU, as nn.GELU()
# The activation each kernel applies as a post-op. oneDNN's ReLU post-op turns NaN into 0, where torch's ReLU keeps
# it (a NaN or Inf input must not come out as plausible logits), so ReLU runs after the kernel, in place.
_POST_OP = {"none": "none", "relu": "none", "gelu": "gelu"}
_PLAIN_ACT = {"none": lambda y: y, "relu": F.relu, "gelu": F.gelu}  # the same activations off the fused path


def fusable(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether `module` may run `x` through the fused inference kernels."""
    return (
        fused_kernels.enabled
        and _HAVE_ONEDNN
        and not module.training
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not is_exporting()
    )


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups  # type: ignore[arg-type]


def conv2d_fused(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv: nn.Conv2d,
    act: str = "none",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`act(conv(x))` ("none", "relu" or "gelu"), or `conv(x) + residual`, with `conv`'s geometry and the given
    (folded or packed, `pack_conv_weight`) weight and bias. x (B, C, H, W) channels-last -> (B, C_out, H', W')
    channels-last."""
    ops, geometry = torch.ops.mkldnn._convolution_pointwise, _geometry(conv)
    if residual is not None:
        return ops.binary(x, residual, weight, bias, *geometry, "add", 1.0, None, [], None)
    return _relu_after(ops.default(x, weight, bias, *geometry, _POST_OP[act], [], _ALGORITHM[act]), act)


def _relu_after(y: torch.Tensor, act: str) -> torch.Tensor:
    """`y`, with the ReLU that `_POST_OP` leaves out of the kernel applied in place when `act` is "relu"."""
    return y.relu_() if act == "relu" else y


def pack_conv_weight(weight: torch.Tensor, conv: nn.Conv2d, input_size: Sequence[int] | None = None) -> torch.Tensor:
    """`weight` (`conv.weight` or a folded copy) reordered once into oneDNN's blocked layout for `conv`'s geometry,
    chosen for `input_size` if given; valid for any input size (oneDNN reorders only on a layout mismatch)."""
    size = None if input_size is None else list(input_size)
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), *_geometry(conv), size)


class Conv2d(CachedByInput, nn.Conv2d):
    """`nn.Conv2d` (same parameters and checkpoint keys) with an optional fused activation: `conv(x, act)` =
    `act(conv(x))`, act "none", "relu" or "gelu" (exact).

    At inference on a CPU (`fusable`) it runs on channels-last maps (output channels-last) with a copy of its weight
    packed once into oneDNN's blocked layout (cached, refreshed when the weight changes) and the activation as a
    post-op; elsewhere the plain ops run, in the input's memory format.
    """

    def forward(self, x: torch.Tensor, act: str = "none") -> torch.Tensor:  # type: ignore[override]
        if act not in _ALGORITHM:
            raise ValueError(f"Conv2d: act must be one of {sorted(_ALGORITHM)}, got {act!r}")
        if fusable(self, x) and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            x = x.contiguous(memory_format=torch.channels_last)
            weight = self.cached_eager("packed", lambda: pack_conv_weight(self.weight.detach(), self, x.shape))
            return conv2d_fused(x, weight, self.bias, self, act)
        return _PLAIN_ACT[act](super().forward(x))


PACKED_ROWS = 512
"""Linears of at most this many rows (tokens) run on oneDNN-packed weights: up to 1.8x faster on 49-row inputs (a
FasterViT stage 4 at batch 1), no gain from about 1,000 rows on (tests/benchmarks in docs/benchmarks.md)."""


ONEDNN_MAX_IN_FEATURES = 192
"""Plain linears (no activation, no residual) on more than `PACKED_ROWS` rows run through MKL's GEMM, except those of
at most this many input features: with so few, MKL's pass that writes the bias into the output first weighs, and
oneDNN (bias in the kernel) was 1.04-1.5x faster (LITv2's stage-1/2 fc1 at batch 32; docs/benchmarks.md)."""


class Linear(CachedByInput, nn.Linear):
    """`nn.Linear` (same parameters and checkpoint keys) with an optional fused activation ("relu", or "gelu": exact
    GELU) and residual add: `layer(x, act, residual)` = `act(x W^T + b) + residual`.

    At inference on a CPU (`fusable`) the activation and the add are oneDNN post-ops, and inputs of at most
    `PACKED_ROWS` rows use a copy of the weight packed once into oneDNN's blocked layout (cached, refreshed when
    the weight changes); plain products on more rows run through MKL unless `ONEDNN_MAX_IN_FEATURES` says
    otherwise; elsewhere the plain ops run.
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, act: str = "none", residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        if act not in _ALGORITHM:
            raise ValueError(f"Linear: act must be one of {sorted(_ALGORITHM)}, got {act!r}")
        if fusable(self, x) and (residual is None or residual.is_contiguous()):
            small = x.numel() <= PACKED_ROWS * self.in_features
            if act == "none" and residual is None and not small and self.in_features > ONEDNN_MAX_IN_FEATURES:
                return F.linear(x, self.weight, self.bias)  # MKL, as fast as oneDNN on many rows
            weight = self.cached_eager("packed", self._packed) if small else self.weight
            x = x.contiguous()
            if residual is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, self.bias, "add")
            y = torch.ops.mkldnn._linear_pointwise.default(x, weight, self.bias, _POST_OP[act], [], _ALGORITHM[act])
            return _relu_after(y, act)
        y = _PLAIN_ACT[act](F.linear(x, self.weight, self.bias))
        return y if residual is None else y + residual

    def _packed(self) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACKED_ROWS)


class Mlp(nn.Module):
    """fc1 -> act -> fc2 with timm's `Mlp` checkpoint keys; `mlp(x, residual)` = `fc2(act(fc1(x))) + residual`,
    with fc1 + exact GELU and fc2 + residual each one kernel at inference (`Linear`)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = Linear(hidden_features, out_features or in_features)
        self.fused_gelu = type(self.act) is nn.GELU and self.act.approximate == "none"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc1(x, act="gelu") if self.fused_gelu else self.act(self.fc1(x))
        return self.fc2(h, residual=residual)
