"""Fused CPU inference kernels: a convolution or linear map and what follows it (bias, activation, residual
add) in one oneDNN pass over the data.

On a CPU the conv stages and MLPs of these models spend as much time reading and writing feature maps
(BatchNorm, GELU, residual adds, layout reorders) as computing. In eval mode, without autograd, in float32,
with oneDNN present, fastvits layers route through the kernels below: BatchNorm (and layer scale) folded
into the convolution's weights, GELU/ReLU and the residual add applied as oneDNN post-ops, feature maps
kept channels-last. The result equals the plain path to float32 rounding (tested); training, autocast,
other dtypes and devices, and graph capture (torch.compile, ONNX export, which do their own fusion) take
the plain path. `with fused_kernels(False):` (or FASTVITS_FUSED_KERNELS=0) turns the fast path off everywhere,
e.g. for the op-for-op parity checks against the official code.
"""

from __future__ import annotations

import timm.layers
import torch
from torch import nn

from .cache import is_exporting
from .switch import Switch

__all__ = ["Mlp", "conv2d_fused", "fusable", "fused_kernels"]

fused_kernels = Switch("FASTVITS_FUSED_KERNELS")
"""On/off for the whole fast path: `with fused_kernels(False): ...`, `fused_kernels.set(False)`, `.enabled`."""
_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_ALGORITHM = {"none": "", "relu": "", "gelu": "none"}  # "none": exact (erf) GELU, as nn.GELU()


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


def conv2d_fused(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    conv: nn.Conv2d,
    act: str = "none",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`act(conv(x))` ("none", "relu" or "gelu"), or `conv(x) + residual`, with `conv`'s geometry and the given
    (folded) weight and bias. x (B, C, H, W) channels-last -> (B, C_out, H', W') channels-last."""
    geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if residual is not None:
        return torch.ops.mkldnn._convolution_pointwise(x, residual, weight, bias, *geometry, "add", 1.0, None, [], None)
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, act, [], _ALGORITHM[act])


class Mlp(timm.layers.Mlp):
    """timm's `Mlp` (same parameters and checkpoint keys) whose first linear and exact GELU run as one kernel
    at inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            fusable(self, x)
            and type(self.act) is nn.GELU
            and self.act.approximate == "none"
            and isinstance(self.fc1, nn.Linear)
            and isinstance(self.norm, nn.Identity)
        ):
            h = torch.ops.mkldnn._linear_pointwise(x, self.fc1.weight, self.fc1.bias, "gelu", [], "none")
            return self.fc2(h)  # dropouts are identities in eval mode
        return super().forward(x)
