"""When the eager CPU kernels of the inference engine apply."""

from __future__ import annotations

import torch

__all__ = ["eager_cpu_float32"]


def eager_cpu_float32(x: torch.Tensor) -> bool:
    """Whether `x` is a float32 CPU tensor met in eager execution: outside autocast and outside graph capture
    (torch.compile, torch.export and the ONNX exporters built on them, TorchScript), which get plain torch ops."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
    )
