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
Both export the model's inference form for exporters (`optimize_for_inference(model, runtime="export")`: BatchNorm
and layer scales folded, position encodings of the exported size as constants, the plain attention path, since ONNX
has no attention operator before opset 23), so a plain or an optimized model gives the same graph, with a dynamic
batch dimension. Height and width are fixed by default: the models pad to window multiples
with amounts computed from the input size, which a traced graph freezes. `dynamic_size=True` (dynamo
exporter) leaves them symbolic too, over the sizes for which one graph is exact: multiples of the
model's total stride (32) from `min_dynamic_size` up to `max_size`. FasterViT's lower bound is where
every carrier-token stage has more than one window per side (a one-window map runs without carrier
tokens, another graph). The range is written into the file's metadata (`SIZE_METADATA_KEY`); check an
input against it with `check_onnx_input(session, shape)` (`verify_onnx` does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision

from .inference import optimize_for_inference

__all__ = [
    "DEFORM_CONV_MIN_OPSET",
    "SIZE_METADATA_KEY",
    "check_onnx_input",
    "export_onnx",
    "min_dynamic_size",
    "size_multiple",
    "verify_onnx",
]

DEFORM_CONV_MIN_OPSET = 19  # first opset with DeformConv
SIZE_METADATA_KEY = "fastvits.dynamic_size"  # JSON {"multiple", "min", "max"} of a dynamic-size export


@dataclasses.dataclass(frozen=True)
class _SizeRange:
    """The heights and widths one dynamic-size graph serves: multiples of `multiple` from `min` to `max` px."""

    multiple: int
    min: int
    max: int

    def serves(self, h: int, w: int) -> bool:
        return all(side % self.multiple == 0 and self.min <= side <= self.max for side in (h, w))

    def __str__(self) -> str:
        return f"multiples of {self.multiple} from {self.min} to {self.max} px per side"


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


def _export_dynamo(
    model: nn.Module,
    x: torch.Tensor,
    path: Path,
    opset: int,
    dynamic_batch: bool,
    names: dict,
    size_range: _SizeRange | None,
) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "export_onnx(dynamo=True) needs onnxscript: pip install onnxscript (or fastvits[onnx]), "
            "or use the TorchScript exporter with dynamo=False"
        ) from e
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=4096)} if dynamic_batch else {}
    if size_range is not None:
        m = size_range.multiple
        for axis, name in ((2, "height"), (3, "width")):
            # Multiples of the total stride: every stage's map is then an exact fraction of the input.
            dims[axis] = m * torch.export.Dim(f"{name}_blocks", min=size_range.min // m, max=size_range.max // m)
    try:
        # torch.export first, so that a size range the model cannot serve fails here instead of the ONNX
        # exporter falling back to a tracer that would freeze the sizes.
        exported = torch.export.export(model, (x,), dynamic_shapes=(dims,) if dims else None)
    except torch._dynamo.exc.UserError as e:
        if size_range is None:
            raise
        raise ValueError(
            f"{type(model).__name__} does not export as one graph for every size in {size_range}: "
            f"{e}\nExport with dynamic_size=False (fixed H x W), or narrow the range (max_size)."
        ) from e
    if size_range is not None:
        _check_served_sizes(exported, size_range)
    program = torch.onnx.export(
        exported,
        dynamo=True,
        opset_version=opset,
        custom_translation_table={torch.ops.torchvision.deform_conv2d.default: _deform_conv2d_onnxscript},
        verbose=False,
        **names,
    )
    if size_range is not None:
        program.model.metadata_props[SIZE_METADATA_KEY] = json.dumps(dataclasses.asdict(size_range))
    program.save(str(path))


def _check_served_sizes(exported: torch.export.ExportedProgram, size_range: _SizeRange) -> None:
    """Refuse an export whose graph serves fewer sizes than asked. torch.export narrows the range of a derived
    dimension (height = 32 * blocks) instead of failing when the example fixed a size that depends on it, and
    the ONNX graph drops the range checks that the exported program keeps."""
    from torch.utils._sympy.value_ranges import bound_sympy

    name = exported.graph_signature.user_inputs[0]
    image = next(n for n in exported.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"]
    symbols = {k: v for k, v in exported.range_constraints.items() if k.is_Symbol}
    for axis, side in ((2, "height"), (3, "width")):
        size = image.shape[axis]
        if isinstance(size, int):
            served = (size, size)
        else:
            bounds = bound_sympy(size.node.expr, symbols)
            served = (int(bounds.lower), int(bounds.upper))
        if served != (size_range.min, size_range.max):
            raise ValueError(
                f"the exported graph serves {side}s from {served[0]} to {served[1]} px only, not "
                f"{size_range}: a size in the model depends on the input size in a way that fixes it; "
                "export with dynamic_size=False (fixed H x W), or with max_size within that range"
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


def size_multiple(model: nn.Module) -> int:
    """The model's total stride (its largest feature reduction; 32 for FasterViT and LITv2): a dynamic-size
    export takes heights and widths that are multiples of it."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(
            f"{type(model).__name__} has no feature_info to take its total stride from; "
            "export it with dynamic_size=False (fixed H x W)"
        )
    reductions = info.reduction() if hasattr(info, "reduction") else [f["reduction"] for f in info]  # timm FeatureInfo
    return max(reductions)


def min_dynamic_size(model: nn.Module, in_chans: int = 3) -> int:
    """Smallest side of a dynamic-size export: two strides, and more than one window per side in every HAT layer
    or stage. An exporter fixes every dimension that is 1 in its example (a one-window map's window count), and a
    map that fits in one window runs without carrier tokens, another graph. The HAT layers' strides are read from one
    forward pass (eval mode)."""
    from .layers import HAT2d
    from .models.fastervit import HATStage

    multiple = size_multiple(model)
    probe = 8 * multiple  # any multiple of the total stride gives exact strides
    strides: list[tuple[int, int]] = []  # (stride of the layer's map, window size)

    def record(layer: nn.Module, args: tuple) -> None:
        channels_last = getattr(layer, "channels_last", False)  # HATStage: (B, C, H, W)
        side = args[0].shape[1] if channels_last else args[0].shape[2]  # (B, H, W, C) or (B, C, H, W)
        strides.append((probe // side, layer.window_size))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, (HAT2d, HATStage))]
    if hooks:
        param = next(model.parameters())
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_chans, probe, probe, device=param.device, dtype=param.dtype))
        finally:
            for h in hooks:
                h.remove()
    one_window = max((stride * window for stride, window in strides), default=0)  # largest side with one window
    return max(2 * multiple, (one_window // multiple + 1) * multiple)


def check_onnx_input(session: Any, shape: Sequence[int]) -> None:
    """Raise ValueError if an input of `shape` (B, C, H, W) is outside the sizes that the model of an
    `onnxruntime.InferenceSession` was exported for by a dynamic-size export (no-op for other models:
    onnxruntime checks fixed sizes itself). The graph cannot check this range: call it before `session.run`."""
    meta = session.get_modelmeta().custom_metadata_map
    if SIZE_METADATA_KEY not in meta:
        return
    size_range = _SizeRange(**json.loads(meta[SIZE_METADATA_KEY]))
    h, w = shape[-2:]
    if not size_range.serves(h, w):
        raise ValueError(
            f"input {h}x{w} is outside the sizes this ONNX model was exported for ({size_range}): "
            f"resize or pad the image to such a size, or export for this size (export_onnx(..., input_size=(C, {h}, "
            f"{w})))"
        )


def _dynamic_size_range(model: nn.Module, x: torch.Tensor, max_size: int) -> _SizeRange:
    """The size range of a dynamic-size export, checked against the example input x."""
    size_range = _SizeRange(size_multiple(model), min_dynamic_size(model, x.shape[1]), max_size)
    m, lo = size_range.multiple, size_range.min
    if lo > max_size:
        raise ValueError(f"max_size={max_size} is below the smallest size this model exports for ({lo})")
    h, w = x.shape[2:]
    if not size_range.serves(h, w):
        raise ValueError(
            f"input_size {h}x{w} is not one of the sizes a dynamic-size export serves ({size_range}); "
            f"pass such an input_size, e.g. (C, {max(lo, -(-h // m) * m)}, {max(lo, -(-w // m) * m)})"
        )
    return size_range


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFORM_CONV_MIN_OPSET,
    *,
    dynamo: bool = True,
    dynamic_size: bool = False,
    max_size: int = 2048,
) -> Path:
    """Export `model` (in eval mode) to an ONNX file; returns the path.

    Args:
        model: any fastvits model (or another nn.Module taking one image batch).
        path: output file.
        input_size: (C, H, W) of the exported graph; default: the model's `pretrained_cfg["input_size"]`.
        dynamic_batch: leave the batch dimension symbolic (inputs and outputs).
        opset: ONNX opset; >= 19 when the model has deformable convolutions (LITv2).
        dynamo: use PyTorch's `torch.export`-based exporter (needs onnxscript); False: the TorchScript one.
        dynamic_size: leave height and width symbolic too (dynamo exporter): one graph for every side that is a
            multiple of `size_multiple(model)` from `min_dynamic_size` to `max_size`; input_size must be such a
            size. The range goes into the file's metadata (`check_onnx_input` reads it).
        max_size: largest height and width of a dynamic-size export.

    The model is exported with `eval()` semantics (its inference form for exporters; the model itself is not
    changed). Outputs are named `output` (or `output_0`, `output_1`, ... for a list, e.g. a `features_only` model); the
    input is named `image`.
    """
    if opset < DEFORM_CONV_MIN_OPSET and _uses_deform_conv(model):
        raise ValueError(
            f"{type(model).__name__} has deformable convolutions, which ONNX supports from opset "
            f"{DEFORM_CONV_MIN_OPSET} (DeformConv); got opset={opset}"
        )
    if dynamic_size and not dynamo:
        raise ValueError("dynamic_size=True needs the dynamo exporter (dynamo=True); the TorchScript tracer fixes H, W")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example_input(model, input_size)
    frozen = optimize_for_inference(model, runtime="export")  # an eval-mode copy: `model` is not changed
    size_range = _dynamic_size_range(frozen, x, max_size) if dynamic_size else None
    with torch.no_grad():
        out = frozen(x)  # also keeps the position encodings of the exported size as constants
    n_out = len(out) if isinstance(out, (list, tuple)) else 1
    names = dict(
        input_names=["image"],
        output_names=["output"]
        if n_out == 1 and isinstance(out, torch.Tensor)
        else [f"output_{i}" for i in range(n_out)],
    )
    if dynamo:
        _export_dynamo(frozen, x, path, opset, dynamic_batch, names, size_range)
    else:
        _export_torchscript(frozen, x, path, opset, dynamic_batch, names)
    return path


def verify_onnx(path: str | os.PathLike, model: nn.Module, x: torch.Tensor, atol: float = 1e-4) -> float:
    """Run the ONNX file in onnxruntime (CPU) on `x` and compare with `model(x)` in eval mode.

    Returns the largest absolute difference over all outputs; raises AssertionError above `atol`.
    """
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_onnx_input(session, x.shape)
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
