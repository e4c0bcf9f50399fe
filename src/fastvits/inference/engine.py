"""`optimize_for_inference`: a plain model in, an inference-only copy out, converted module by module.

The conversions are registered by module type (`converts`): each takes a plain module in eval mode and returns its
inference form, converting the children it keeps with `convert_children`. Modules without a conversion are walked
into. The walk is the same whether it starts at a whole model (`optimize_for_inference`), at one stage or layer
(`optimize_module`, which timm's `reparameterize_model` reaches through the `fuse()` hooks of fastvits' stages and
layers), or at a detector that holds a fastvits backbone.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .cpu_features import native_bf16
from .onednn import ONEDNN_AVAILABLE

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "InferenceOnly",
    "InferenceOptions",
    "convert_children",
    "converts",
    "optimize_for_inference",
    "optimize_module",
]

M = TypeVar("M", bound=nn.Module)

RUNTIMES = ("eager", "compile", "export")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class InferenceOptions:
    """What the inference form is for.

    Attributes:
        runtime: "eager" runs the model as it is (on a CPU with oneDNN: fused oneDNN kernels on packed weights);
            "compile" and "export" keep plain torch ops, which `torch.compile` fuses itself and exporters translate;
            "export" also keeps the plain attention path (ONNX has no attention operator before opset 23).
        max_sizes: per layer, how many input sizes keep their position encodings as buffers (`SizeTable`).
        precision: "fp32", or "bf16": weights and activations in bfloat16 (LayerNorm statistics and the softmax
            accumulate in float32 inside their kernels, the deformable convs compute in float32); inputs are cast to
            bfloat16 and outputs back to float32 at the model's call.
    """

    runtime: str = "eager"
    max_sizes: int = 8
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose from {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.max_sizes < 0:
            raise ValueError(f"max_sizes must be >= 0, got {self.max_sizes}")

    @property
    def cpu_kernels(self) -> bool:
        """Whether modules are swapped for the eager oneDNN kernels (`fastvits.inference.onednn`)."""
        return self.runtime == "eager" and ONEDNN_AVAILABLE

    @property
    def fused_attn(self) -> bool:
        """Whether attention runs `F.scaled_dot_product_attention` (1.04x on the CPU, much more on a GPU)."""
        return self.runtime != "export"


Converter = Callable[[nn.Module, InferenceOptions], nn.Module]
_CONVERTERS: dict[type[nn.Module], Converter] = {}


def converts(*types: type[nn.Module]) -> Callable[[Converter], Converter]:
    """Register `fn(module, options) -> inference form` for modules of exactly these types."""

    def register(fn: Converter) -> Converter:
        for t in types:
            _CONVERTERS[t] = fn
        return fn

    return register


def _convert(module: nn.Module, options: InferenceOptions) -> nn.Module:
    convert = _CONVERTERS.get(type(module))
    return convert(module, options) if convert is not None else convert_children(module, options)


def convert_children(module: M, options: InferenceOptions) -> M:
    """Convert every child of `module` in place (and pick its attention path); returns `module`."""
    if hasattr(module, "fused_attn"):
        module.fused_attn = options.fused_attn
    for name, child in list(module.named_children()):
        new = _convert(child, options)
        if new is not child:
            setattr(module, name, new)
    return module


def optimize_module(module: nn.Module, options: InferenceOptions | None = None) -> nn.Module:
    """The inference form of `module` (in eval mode), converted in place; returns it or its replacement.

    The hook behind the `fuse()` methods that `timm.utils.reparameterize_model` calls; `optimize_for_inference` is
    the whole-model entry point.
    """
    if module.training:
        raise RuntimeError(
            f"{type(module).__name__} is in training mode: its inference form folds BatchNorm running statistics "
            "and freezes position encodings; call .eval() first"
        )
    return _convert(module, options or InferenceOptions()).eval()  # modules made by the conversion start in train mode


class InferenceOnly(nn.Module):
    """The mark of a model made by `optimize_for_inference`: shows the options in the model's repr, and refuses
    `.train()` (the copy's BatchNorms and layer scales are folded into frozen weights; train the original).

    It is the model's first child, so `.train()` reaches it before any other module; it puts the model's own flag
    back to eval before refusing. The model is held outside the module tree (no second path to its parameters),
    which deep copies and pickles follow to the copy.
    """

    def __init__(self, options: InferenceOptions, model: nn.Module) -> None:
        super().__init__()
        self.options = options
        object.__setattr__(self, "model", model)

    def extra_repr(self) -> str:
        o = self.options
        return (
            f"runtime={o.runtime}, precision={o.precision}, cpu_kernels={o.cpu_kernels}, max_sizes={o.max_sizes}, "
            "frozen weights"
        )

    def train(self, mode: bool = True) -> InferenceOnly:
        if mode:
            self.model.training = False
            raise RuntimeError(
                "this model is an inference-only copy made by fastvits.optimize_for_inference: its weights are "
                "frozen, with BatchNorm and layer scales folded in. Train the original model, then optimize it again."
            )
        return super().train(False)


def _inputs_to_bfloat16(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple:
    cast = lambda t: t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return tree_map(cast, args), tree_map(cast, kwargs)


def _outputs_to_float32(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, output)


def _check_precision(precision: str, model: nn.Module) -> None:
    """Say so when bf16 is asked for on a CPU that only emulates it."""
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    if precision == "bf16" and on_cpu and native_bf16() is None:
        warnings.warn(
            "this CPU has no native bf16 (no AVX512-BF16 or AMX): torch emulates it, about 10x slower than float32 "
            "(measured on an AVX2-only CPU); use precision='fp32' here",
            stacklevel=3,
        )


def optimize_for_inference(
    model: M, *, runtime: str = "eager", max_sizes: int = 8, precision: str = "fp32"
) -> M:
    """An inference-only copy of `model`; `model` itself is not changed.

    The copy computes the same function up to float32 rounding (tested against the plain model on every fixture):
    - BatchNorms after convolutions and layer scales are folded into the weights in front of them;
    - position biases and position embeddings are computed once per input size and kept as buffers, up to
      `max_sizes` sizes per layer (`fastvits.inference.position`);
    - attention runs `F.scaled_dot_product_attention` (not with runtime="export");
    - with runtime="eager" on a CPU with oneDNN, convolutions and linears run as fused oneDNN kernels on packed
      weights (`fastvits.inference.onednn`) and LITv2's deformable convolutions as one gather and one GEMM.

    The copy owns frozen weights (`requires_grad=False`) and refuses `.train()`; its repr ends with the options.
    Other runtimes: "compile" for `torch.compile` (run one eager forward per input size first, so that the graph
    reads the position biases as constants), "export" for ONNX and torch.export.

    `precision="bf16"` turns weights and activations to bfloat16 (see `InferenceOptions`); the copy then takes float32
    inputs and returns float32 outputs at its call (`forward_features` and the other methods take bfloat16 inputs).
    On a CPU that only emulates bf16 it warns.
    """
    options = InferenceOptions(runtime=runtime, max_sizes=max_sizes, precision=precision)
    _check_precision(precision, model)
    frozen = optimize_module(copy.deepcopy(model).eval(), options).requires_grad_(False)
    if precision == "bf16":
        frozen.to(torch.bfloat16)
        frozen.register_forward_pre_hook(_inputs_to_bfloat16, with_kwargs=True)
        frozen.register_forward_hook(_outputs_to_float32, with_kwargs=True)
    frozen._modules.pop("inference", None)  # a model optimized before gets the new options
    # first among the children, so that .train() reaches the refusal before it changes any other module
    frozen._modules = {"inference": InferenceOnly(options, frozen).eval(), **frozen._modules}
    return frozen
