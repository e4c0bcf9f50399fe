"""A PyTorch module in a runtime's own form and precision: the step that artifacts and benchmarks share.

`runtime_model` turns an eval-mode float32 module into an ONNX file (ONNX Runtime) or an `openvino.Model`
(OpenVINO), quantized to int8 on calibration images when asked. `fastvits.deploy.export_artifact` writes the result
into an artifact folder; `fastvits bench` times it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .calibration import CalibrationSet
from .int8 import quantize_onnxruntime, quantize_openvino
from .runtimes import openvino_model

__all__ = ["OnnxExport", "RuntimeModel", "export_dynamic_onnx", "runtime_model"]

OnnxExport = Callable[[nn.Module, torch.Tensor, Path], tuple[str, bool]]
"""(module, example input, ONNX path) -> (how it was exported, whether the batch axis is dynamic)."""


@dataclass(frozen=True)
class RuntimeModel:
    """What `runtime_model` made.

    Attributes:
        model: the ONNX file (onnxruntime) or the `openvino.Model` (openvino).
        dynamic_batch: whether the model takes any batch size (else only the example's).
        exported_with: how the PyTorch graph was taken (exporter and shape handling).
        kept_in_fp32: names of the layers an int8 model leaves in float32 (empty for the other precisions).
    """

    model: Path | Any
    dynamic_batch: bool
    exported_with: str
    kept_in_fp32: list[str] = field(default_factory=list)


def export_dynamic_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> tuple[str, bool]:
    """`fastvits.export.export_onnx` with a dynamic batch axis and the example's C x H x W."""
    from ..export import export_onnx

    export_onnx(module, path, tuple(example.shape[1:]), dynamic_batch=True)
    return "fastvits.export.export_onnx (dynamic batch)", True


def runtime_model(
    module: nn.Module,
    runtime: str,
    precision: str,
    example: torch.Tensor,
    onnx_path: Path,
    calibration: CalibrationSet | None = None,
    onnx_export: OnnxExport = export_dynamic_onnx,
) -> RuntimeModel:
    """`module` (eval mode, float32, CPU) for `runtime` ("onnxruntime" or "openvino") in `precision`.

    `example` is an input of the exported size (batch >= 2: exporters specialise size-1 dimensions). ONNX Runtime
    models are written to `onnx_path` by `onnx_export`, int8 ones to `onnx_path` with the suffix `.int8.onnx` (the
    float32 file stays). OpenVINO models are converted from the module's `torch.export` program and stay in memory.
    int8 is post-training static quantization on `calibration` (required for it). A fastvits model should come in
    its export form (`optimize_for_inference(model, runtime="export")`) for OpenVINO; `fastvits.export` makes that
    form itself for ONNX.
    """
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration images (fastvits.deploy.load_calibration)")
    if runtime == "openvino":
        how = "torch.export (dynamic batch), OpenVINO's PyTorch frontend"
        converted = openvino_model(module, example)
        if precision != "int8":
            return RuntimeModel(converted, True, how)
        quantized, kept = quantize_openvino(converted, calibration)
        return RuntimeModel(quantized, True, how, kept)
    exported_with, dynamic = onnx_export(module, example, onnx_path)
    if precision != "int8":
        return RuntimeModel(onnx_path, dynamic, exported_with)
    int8 = onnx_path.with_suffix(".int8.onnx")
    kept = quantize_onnxruntime(onnx_path, int8, calibration)
    return RuntimeModel(int8, dynamic, exported_with, kept)
