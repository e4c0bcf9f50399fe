"""Post-training static int8 quantization of an exported float32 ONNX graph, with each runtime's own toolchain.

- ONNX Runtime: `onnxruntime.quantization.quantize_static`, QDQ format, int8 weights per output channel, uint8
  activations per tensor, MinMax ranges over the calibration images (deterministic: no sampling, no histograms).
- OpenVINO: `nncf.quantize` with its default (performance) preset on the model that OpenVINO's PyTorch frontend
  converted; statistics over all calibration images.

Both quantize the convolutions and matrix multiplications (the attention score and value products included) and
keep in float32 what measurement showed int8 cannot carry (`docs/low_precision.md`):
- the convolution that reads the image (FasterViT's first stem conv, LITv2's patch embedding): normalised pixels
  of a mostly flat image span a range that uint8 steps cut coarsely; in int8 it alone cost a small FasterViT 0.9
  points of Fashion-MNIST top-1 (90.6 -> 89.7), and nothing is lost with it in float32;
- LITv2's deformable convolutions (no int8 kernel in either runtime).
NNCF's `model_type=TRANSFORMER` (SmoothQuant) is not used: on the small FasterViT it cost 15 points (90.8 -> 75.5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .calibration import CalibrationSet

__all__ = ["QUANTIZED_OPS", "quantize_onnxruntime", "quantize_openvino"]

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _image_readers(graph: Any) -> list[str]:
    """Names of the nodes of `QUANTIZED_OPS` in the ONNX `graph` that read a graph input (the image) directly."""
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and n.input[0] in inputs]


def quantize_onnxruntime(fp32: Path, out: Path, calibration: CalibrationSet) -> list[str]:
    """Write the int8 QDQ model of the ONNX file `fp32` to `out`; returns the names of the nodes kept in float32.

    The graph goes through ONNX Runtime's recommended pre-processing first (shape inference and graph
    optimisation, `quant_pre_process`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + ".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    name, kept = graph.input[0].name, _image_readers(graph)

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator = calibration.batches(1)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch.numpy()}

    quantize_static(
        str(prepared), str(out), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=kept,
    )
    prepared.unlink()
    return kept


def quantize_openvino(model: Any, calibration: CalibrationSet) -> tuple[Any, list[str]]:
    """(the int8 version of the `openvino.Model` `model`, the names of the layers kept in float32)."""
    try:
        import nncf
    except ImportError as e:
        from .runtimes import RuntimeUnavailable

        raise RuntimeUnavailable("int8 for OpenVINO needs NNCF: pip install 'fastvits[openvino]'") from e

    kept = [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "Convolution" and op.input_value(0).get_node().get_type_name() == "Parameter"]
    dataset = nncf.Dataset([b.numpy() for b in calibration.batches(1)])
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # its per-step INFO lines; restored after
    try:
        quantized = nncf.quantize(model, dataset, subset_size=len(calibration),
                                  ignored_scope=nncf.IgnoredScope(names=kept) if kept else None)
    finally:
        nncf_log.setLevel(level)
    return quantized, kept
