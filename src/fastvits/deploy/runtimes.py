"""The runtimes a deployed model runs in, outside PyTorch: ONNX Runtime and OpenVINO, on the CPU.

Each is imported only when used (`pip install fastvits[onnx]`, `pip install fastvits[openvino]`). A session is a
callable from a float32 NCHW array to the output array. What each runtime computes in:
- ONNX Runtime runs the graph's own types: float32, or int8 between the QuantizeLinear/DequantizeLinear pairs of a
  QDQ model. It has no bf16 CPU kernels for these graphs, so bf16 is refused.
- OpenVINO picks its inference precision itself and, on a CPU with native bf16 (AMX, AVX512-BF16), computes float32
  models in bf16 unless told otherwise. `openvino_session` always sets `INFERENCE_PRECISION_HINT`: f32 for fp32 and
  int8 (the layers left out of int8 stay float32), bf16 for bf16.
  OpenVINO cannot share a process with a preloaded allocator (tcmalloc, jemalloc: `fastvits --allocator`, or
  LD_PRELOAD): its CPU plugin then frees memory the other allocator handed out and the process aborts ("free():
  invalid size", seen with OpenVINO 2026.4 and both allocators); such a process is refused before it loads OpenVINO.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..allocator import ALLOCATORS, current_allocator
from ..errors import UserError
from ..inference.cpu_features import native_bf16

__all__ = ["RUNTIMES", "RuntimeUnavailable", "Session", "check_runtime", "onnxruntime_session", "openvino_model",
           "openvino_session", "runtime_version"]

RUNTIMES = ("onnxruntime", "openvino")
_INSTALL = {"onnxruntime": "pip install 'fastvits[onnx]'", "openvino": "pip install 'fastvits[openvino]'"}
_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
Session = Callable[[np.ndarray], np.ndarray]


class RuntimeUnavailable(UserError, RuntimeError):
    """A runtime is not installed, or cannot run a precision on this CPU; the message says what to use instead."""


def _import(runtime: str) -> Any:
    if runtime == "openvino" and (allocator := current_allocator()) in ALLOCATORS:
        raise RuntimeUnavailable(
            f"OpenVINO aborts in a process with {allocator} preloaded (its CPU plugin frees memory {allocator} "
            "allocated): run OpenVINO without `fastvits --allocator` and without LD_PRELOAD, or use onnxruntime"
        )
    try:
        if runtime == "onnxruntime":
            import onnxruntime

            return onnxruntime
        import openvino

        return openvino
    except ImportError as e:
        raise RuntimeUnavailable(f"{runtime} is not installed: {_INSTALL[runtime]}") from e


def runtime_version(runtime: str) -> str:
    return str(_import(runtime).__version__)


def check_runtime(runtime: str, precision: str) -> None:
    """Refuse a runtime that is unknown or not installed, or a precision it cannot run on this CPU."""
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if precision not in _PRECISIONS[runtime]:
        raise RuntimeUnavailable(
            f"{runtime} cannot run {precision} (it runs {', '.join(_PRECISIONS[runtime])}): use --runtime openvino, "
            "or fastvits' own engine (fastvits.optimize_for_inference(model, precision='bf16'))"
        )
    if precision == "bf16" and native_bf16() is None:
        raise RuntimeUnavailable(
            "this CPU has no native bf16 (no AVX512-BF16 or AMX): OpenVINO would fall back to float32 and the "
            "artifact would not be what it says; export fp32 or int8 here, or bf16 on a CPU with AMX or AVX512-BF16"
        )
    _import(runtime)


def onnxruntime_session(path: str | Path, threads: int, arena: bool = True) -> Session:
    """An ONNX Runtime CPU session on `threads` threads, sequential, all graph optimisations, no spinning workers
    (idle spinning threads would take the CPU from whatever runs next). `arena=False` frees activations after each
    run (for peak-memory probes)."""
    ort = _import("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_model(module: Any, example: Any) -> Any:
    """The `openvino.Model` of a PyTorch module (eval mode): `torch.export` from inputs shaped like `example`
    (N >= 2, C, H, W) with the batch dimension dynamic, converted by OpenVINO's PyTorch frontend. (Its ONNX frontend
    has no `DeformConv`, which LITv2 needs, and its TorchScript tracing cannot follow FasterViT's size-dependent
    position tables; the exported program is the graph our ONNX export starts from too.)"""
    ov = _import("openvino")
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    return ov.convert_model(program)


def openvino_session(model: str | Path | Any, precision: str, threads: int) -> Session:
    """An OpenVINO CPU session for an IR file (or an `openvino.Model`), computing in `precision`'s
    inference precision (fp32 and int8: f32; bf16: bf16), one stream, latency hint, on `threads` threads."""
    ov = _import("openvino")
    core = ov.Core()
    source = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
    compiled = core.compile_model(source, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    return lambda x: request.infer([x])[0].copy()
