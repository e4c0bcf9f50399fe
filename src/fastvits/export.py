"""ONNX export for every fastvits model, deformable convolutions included.

LITv2's token merging runs `torchvision.ops.deform_conv2d`, which neither ONNX exporter knows. It
maps one-to-one onto the ONNX `DeformConv` operator (opset >= 19): same offset layout ((y, x) per
kernel tap, taps row-major), same zero contribution of samples outside the map. `export_onnx`
registers that mapping for the exporter it uses, so the exported graph runs in onnxruntime (which
matches torchvision to float rounding) and in any other runtime implementing `DeformConv`.

Two exporters:
- `dynamo=True` (default, PyTorch's default since 2.9): `torch.export` then ONNX via onnxscript
  (`pip install onnxscript`, part of the `fastvits[onnx]` extra).
- `dynamo=False`: the older TorchScript-tracing exporter; no extra dependency and faster to run,
  deprecated by PyTorch.
Both export the plain attention path (`fastvits.layers.fused_attn(False)`) and give a graph with a
dynamic batch dimension. Height and width stay fixed: the models pad to
window multiples with amounts computed from the input size, which the exported graph freezes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision

from .layers import fused_attn

__all__ = ["DEFORM_CONV_MIN_OPSET", "export_onnx", "verify_onnx"]

DEFORM_CONV_MIN_OPSET = 19  # first opset with DeformConv


def _uses_deform_conv(model: nn.Module) -> bool:
    from .models.litv2 import DeformConv2dPack

    return any(isinstance(m, (DeformConv2dPack, torchvision.ops.DeformConv2d)) for m in model.modules())


# ---------------------------------------------------------------------------------- dynamo exporter
def _deform_conv2d_onnxscript(
    input: Any,
    weight: Any,
    offset: Any,
    mask: Any,
    bias: Any,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    offset_groups: int,
    use_mask: bool,
) -> Any:
    """`torchvision::deform_conv2d` -> ONNX DeformConv, as an onnxscript translation (traced, not scripted)."""
    from onnxscript import opset19 as op

    attrs = dict(
        dilations=[dilation_h, dilation_w],
        group=groups,
        offset_group=offset_groups,
        pads=[pad_h, pad_w, pad_h, pad_w],
        strides=[stride_h, stride_w],
    )
    if use_mask:  # modulated (v2) deformable conv; torchvision passes a dummy mask otherwise
        return op.DeformConv(input, weight, offset, bias, mask, **attrs)
    return op.DeformConv(input, weight, offset, bias, **attrs)


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool, names: dict) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "export_onnx(dynamo=True) needs onnxscript: pip install onnxscript (or fastvits[onnx]), "
            "or use the TorchScript exporter with dynamo=False"
        ) from e
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        custom_translation_table={torch.ops.torchvision.deform_conv2d.default: _deform_conv2d_onnxscript},
        verbose=False,
        **names,
    )


# ----------------------------------------------------------------------------- TorchScript exporter
def _deform_conv2d_symbolic(g: Any, input: Any, weight: Any, offset: Any, mask: Any, bias: Any, *args: Any) -> Any:
    from torch.onnx import symbolic_helper

    opset = g.opset
    if opset < DEFORM_CONV_MIN_OPSET:
        raise RuntimeError(
            f"deformable convolution needs ONNX opset >= {DEFORM_CONV_MIN_OPSET} (DeformConv), got {opset}"
        )
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, offset_groups = (
        symbolic_helper._parse_arg(a, "i") for a in args[:8]
    )
    use_mask = symbolic_helper._parse_arg(args[8], "b")
    inputs = (input, weight, offset, bias, mask) if use_mask else (input, weight, offset, bias)
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=[stride_h, stride_w],
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        dilations_i=[dil_h, dil_w],
        group_i=groups,
        offset_group_i=offset_groups,
    )


def _export_torchscript(
    model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool, names: dict
) -> None:
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv2d_symbolic, 1)
    dynamic_axes = {n: {0: "batch"} for n in names["input_names"] + names["output_names"]} if dynamic_batch else None
    with warnings.catch_warnings():
        # The deprecation notice of the exporter the caller chose, and the tracer's notes that padding
        # decisions become constants (H and W are fixed in the exported graph by design).
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, dynamic_axes=dynamic_axes, **names)


# ------------------------------------------------------------------------------------------ public
def _example_input(model: nn.Module, input_size: Sequence[int] | None) -> torch.Tensor:
    if input_size is None:
        input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if input_size is None:
            raise ValueError("pass input_size=(C, H, W): the model has no pretrained_cfg to take it from")
    if len(input_size) != 3:
        raise ValueError(f"input_size is (C, H, W), got {tuple(input_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # Batch 2, not 1: exporters specialise size-1 dimensions, which would freeze the batch size.
    return torch.randn(2, *input_size, device=device, dtype=dtype)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFORM_CONV_MIN_OPSET,
    *,
    dynamo: bool = True,
) -> Path:
    """Export `model` (in eval mode) to an ONNX file; returns the path.

    Args:
        model: any fastvits model (or another nn.Module taking one image batch).
        path: output file.
        input_size: (C, H, W) of the exported graph; default: the model's `pretrained_cfg["input_size"]`.
        dynamic_batch: leave the batch dimension symbolic (inputs and outputs).
        opset: ONNX opset; >= 19 when the model has deformable convolutions (LITv2).
        dynamo: use PyTorch's `torch.export`-based exporter (needs onnxscript); False: the TorchScript one.

    The model is exported with `eval()` semantics and put back in its previous mode afterwards. Outputs
    are named `output` (or `output_0`, `output_1`, ... for a list, e.g. a `features_only` model); the
    input is named `image`.
    """
    if opset < DEFORM_CONV_MIN_OPSET and _uses_deform_conv(model):
        raise ValueError(
            f"{type(model).__name__} has deformable convolutions, which ONNX supports from opset "
            f"{DEFORM_CONV_MIN_OPSET} (DeformConv); got opset={opset}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        x = _example_input(model, input_size)
        with torch.no_grad():
            out = model(x)
        n_out = len(out) if isinstance(out, (list, tuple)) else 1
        names = dict(
            input_names=["image"],
            output_names=["output"]
            if n_out == 1 and isinstance(out, torch.Tensor)
            else [f"output_{i}" for i in range(n_out)],
        )
        # Plain attention (matmul, softmax, matmul): ONNX has no attention operator before opset 23, the
        # exporters decompose SDPA into the same nodes anyway, and the dynamo one fails on SDPA with a bias.
        with fused_attn(False):
            if dynamo:
                _export_dynamo(model, x, path, opset, dynamic_batch, names)
            else:
                _export_torchscript(model, x, path, opset, dynamic_batch, names)
    finally:
        model.train(was_training)
    return path


def verify_onnx(path: str | os.PathLike, model: nn.Module, x: torch.Tensor, atol: float = 1e-4) -> float:
    """Run the ONNX file in onnxruntime (CPU) on `x` and compare with `model(x)` in eval mode.

    Returns the largest absolute difference over all outputs; raises AssertionError above `atol`.
    """
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(x)
    finally:
        model.train(was_training)
    refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    if len(refs) != len(got):
        raise AssertionError(f"onnxruntime returned {len(got)} outputs, PyTorch {len(refs)}")
    diff = 0.0
    for r, g in zip(refs, got):
        r = r.detach().cpu().numpy()
        if r.shape != g.shape:
            raise AssertionError(f"output shape differs: onnxruntime {g.shape}, PyTorch {r.shape}")
        diff = max(diff, float(np.abs(r - g).max()))
    if diff > atol:
        raise AssertionError(f"onnxruntime output differs from PyTorch by {diff:.3g} > atol={atol:g}")
    return diff
