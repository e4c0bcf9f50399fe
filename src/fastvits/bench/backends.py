"""What gets timed: a model (fastvits, the official FasterViT, or a timm peer) prepared for a backend and a precision.

A backend spec is `eager`, `compile`, `onnxruntime` or `openvino`, optionally with modifiers. fastvits models run
every backend through `fastvits.optimize_for_inference` (with the runtime that fits: eager, compile, or export for
ONNX and OpenVINO), unless a modifier says otherwise:
- `+plain`: the plain model as built, without the inference engine (no effect on other code);
- `+reparam`: timm's `reparameterize_model` instead (modules with `fuse()` / `reparameterize()` /
  `switch_to_deploy()` convert themselves; fastvits' stages reach the same engine through `fuse()`; for the official
  FasterViT this is its deploy mode of cached position biases, switched on after one forward because the official
  caches are filled by a forward);
- `+cl`: channels_last memory format; `+freeze` (compile only): inductor freezing.
A compiled fastvits model runs one eager forward at the benchmark's size first, so that the graph reads its position
biases as constants.

Precisions (`--precision`, several are timed interleaved):
- fp32;
- bf16: fastvits' engine runners get the engine's bf16 form (bfloat16 weights and activations); the official code,
  timm models and `+plain` run under autocast; OpenVINO computes in bf16 (`INFERENCE_PRECISION_HINT`), on CPUs with
  native bf16 only; ONNX Runtime has no bf16;
- fp16: autocast (GPUs);
- int8: onnxruntime and openvino only, the exported graph quantized by the runtime's toolchain
  (`fastvits.deploy.int8`) on the run's calibration images; every implementation goes through the same one.
A backend that cannot run a precision raises `Unsupported`, and the run skips that pair with a note.
Examples: `eager+plain`, `compile+freeze`, `compile+reparam+freeze`, `onnxruntime`, `openvino`.

The official `fastervit` package is never a dependency: `build_official` imports it lazily and
gives the same weights to it through the reverse of fastvits' checkpoint conversion.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..deploy.calibration import CalibrationSet
from ..errors import UserError
from ..inference import PRECISIONS as ENGINE_PRECISIONS
from ..inference import optimize_for_inference
from ..models.fastervit import DERIVED_BUFFERS, official_state_dict
from ..registry import create_model, list_models, resolve_name

__all__ = [
    "BACKENDS",
    "BackendSpec",
    "BenchError",
    "OfficialUnavailable",
    "Runner",
    "Unsupported",
    "build_model",
    "build_official",
    "check_model_name",
    "copy_weights_to_official",
    "default_img_size",
    "official_name",
    "parse_backends",
    "prepare_runner",
]

BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
EXPORTED = ("onnxruntime", "openvino")  # backends that run an exported ONNX graph
# optimize_for_inference's runtime per backend
_RUNTIME = {"eager": "eager", "compile": "compile", "onnxruntime": "export", "openvino": "export"}
AUTOCAST = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = (*AUTOCAST, "int8")
OFFICIAL_INSTALL_HINT = (
    "the official FasterViT package is not installed. Install it next to fastvits with `pip install fastervit` "
    "(NVIDIA Source Code License-NC: non-commercial use only); fastvits never depends on it."
)


# ------------------------------------------------------------------------------------------------ specs


class BenchError(UserError, ValueError):
    """A benchmark asked for something this machine or these models cannot do; the message says what to change."""


class Unsupported(BenchError):
    """A backend cannot run a precision (here): a run of several skips the pair with this note."""


@dataclass(frozen=True)
class BackendSpec:
    """How a model is run: backend plus channels_last / reparameterisation / plain-model modifiers."""

    backend: str = "eager"
    channels_last: bool = False
    reparam: bool = False  # timm's reparameterize_model instead of fastvits.optimize_for_inference
    plain: bool = False  # the plain fastvits model, without the inference engine: for A/B runs
    freeze: bool = False  # compile only: inductor freezing (weights become constants of the graph)

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        backend, *mods = text.strip().lower().split("+")
        if backend not in BACKENDS:
            raise BenchError(f"unknown backend {backend!r} in {text!r}; choose from {', '.join(BACKENDS)}")
        unknown = set(mods) - {"cl", "reparam", "plain", "freeze"}
        if unknown:
            raise BenchError(
                f"unknown modifier(s) {', '.join(sorted(unknown))} in {text!r}; use +cl, +reparam, +plain, +freeze"
            )
        if "freeze" in mods and backend != "compile":
            raise BenchError(f"+freeze is an option of torch.compile: use compile+freeze, not {text!r}")
        if backend in EXPORTED and "cl" in mods:
            raise BenchError(f"{backend} picks its own memory layout: drop +cl from {backend}")
        if "plain" in mods and "reparam" in mods:
            raise BenchError(f"+plain (no inference engine) and +reparam (timm's) contradict each other in {text!r}")
        return cls(backend, "cl" in mods, "reparam" in mods, "plain" in mods, "freeze" in mods)

    def __str__(self) -> str:
        flags = (("cl", self.channels_last), ("reparam", self.reparam), ("plain", self.plain), ("freeze", self.freeze))
        mods = [m for m, on in flags if on]
        return "+".join([self.backend, *mods])


def parse_backends(
    specs: Sequence[str], *, compile: bool = False, channels_last: bool = False, reparam: bool = False
) -> list[BackendSpec]:
    """Backend specs with the command line's shorthand flags applied, duplicates removed, order kept.

    `compile` turns every `eager` into `compile`; `channels_last` adds +cl to the torch backends;
    `reparam` adds +reparam to every spec.
    """
    out: list[BackendSpec] = []
    for text in specs:
        s = BackendSpec.parse(text)
        backend = "compile" if compile and s.backend == "eager" else s.backend
        cl = s.channels_last or (channels_last and backend not in EXPORTED)
        s = BackendSpec(backend, cl, s.reparam or (reparam and not s.plain), s.plain, s.freeze)
        if s not in out:
            out.append(s)
    return out


# ----------------------------------------------------------------------------------------------- models


def is_fastvits_model(name: str) -> bool:
    return resolve_name(name) in set(list_models())


def check_model_name(name: str) -> None:
    """Raise BenchError unless `name` is a fastvits model (or an official alias) or a timm model."""
    if not is_fastvits_model(name) and not timm.is_model(name.split(".")[0]):
        raise BenchError(
            f"unknown model {name!r}: neither a fastvits model ({', '.join(list_models())}) nor a timm model"
        )


def default_img_size(name: str) -> tuple[int, int]:
    """The (H, W) a model is evaluated at by default (its pretrained config), 224x224 if unknown."""
    arch = resolve_name(name).split(".")[0]
    try:
        cfgs = timm.models.get_arch_pretrained_cfgs(arch)
    except (KeyError, AttributeError):
        cfgs = {}
    for cfg in cfgs.values():
        if cfg.input_size:
            return int(cfg.input_size[-2]), int(cfg.input_size[-1])
    return 224, 224


def build_model(
    name: str,
    img_size: tuple[int, int] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    checkpoint: str | None = None,
) -> tuple[str, nn.Module]:
    """(impl, model in eval mode): a fastvits model, else a timm model built for `img_size`.

    fastvits models run any input size, so `img_size` is ignored for them. timm models that take
    `img_size` (ViTs, Swin) are built for it; others (CNNs) are size-agnostic anyway.
    """
    kwargs = dict(model_kwargs or {})
    if is_fastvits_model(name):
        model = create_model(name, **kwargs)
        if checkpoint:
            from ..checkpoint import load_checkpoint

            load_checkpoint(model, checkpoint)
        return "fastvits", model.eval()
    check_model_name(name)
    try:
        model = timm.create_model(name, img_size=img_size, **kwargs) if img_size else timm.create_model(name, **kwargs)
    except TypeError:  # the architecture takes no img_size
        model = timm.create_model(name, **kwargs)
    if checkpoint:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return "timm", model.eval()


# --------------------------------------------------------------------------------------- official models


class OfficialUnavailable(RuntimeError):
    """The official implementation cannot run this comparison (not installed, no counterpart, shape)."""


def official_name(name: str) -> str | None:
    """Official FasterViT name for a fastvits FasterViT name (`fastervit_0_224` -> `faster_vit_0_224`)."""
    name = resolve_name(name).split(".")[0]
    return "faster_vit_" + name[len("fastervit_") :] if name.startswith("fastervit_") else None


def _import_official() -> Any:
    """The official package, imported only when a comparison asks for it (optional, non-commercial)."""
    try:
        return importlib.import_module("fastervit")
    except ImportError as e:
        raise OfficialUnavailable(OFFICIAL_INSTALL_HINT) from e


def build_official(name: str, img_size: tuple[int, int], model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The official FasterViT counterpart of a fastvits model, built for `img_size` (eval mode).

    The official classification models have a fixed square `resolution`; the `*_any_res` ones take
    [H, W]. Raises OfficialUnavailable with the reason otherwise.
    """
    oname = official_name(name)
    if oname is None:
        raise OfficialUnavailable(f"{name} has no official counterpart in the fastervit package (FasterViT only)")
    fastervit = _import_official()
    h, w = img_size
    if oname.endswith("_any_res"):
        resolution: int | list[int] = [h, w]
    elif h == w:
        resolution = h
    else:
        raise OfficialUnavailable(
            f"official {oname} runs square inputs only ({h}x{w} asked); use {name}_any_res for non-square sizes"
        )
    try:
        model = fastervit.create_model(oname, resolution=resolution, **(model_kwargs or {}))
    except (RuntimeError, KeyError) as e:
        raise OfficialUnavailable(f"the fastervit package could not build {oname}: {e}") from e
    return model.eval()


def copy_weights_to_official(ours: nn.Module, official: nn.Module) -> None:
    """Load fastvits weights into the official model, refusing anything but derived buffers missing."""
    result = official.load_state_dict(official_state_dict(ours.state_dict()), strict=False)
    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            "fastvits weights do not fit the official model built for this input size: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {result.unexpected_keys[:8]}{' ...' if len(result.unexpected_keys) > 8 else ''}. "
            "The official model leaves out the carrier-token layers when a stage fits in one window at its "
            "construction size; at sizes where both have them, this means the key conversion is out of date."
        )


# ----------------------------------------------------------------------------------------------- runners


@dataclass
class Runner:
    """A model prepared for one backend.

    `call` runs one forward on an input already passed through `adapt` (device, memory format:
    conversions that are not part of the timing). `memory_call(x)`, when set, builds (outside
    the probe) the zero-argument callable the peak-memory probe runs instead of `call(x)`:
    onnxruntime keeps its arena resident between runs, so its probe uses a session without one
    (see `measure.peak_memory`).
    """

    impl: str
    spec: BackendSpec
    module: nn.Module
    call: Callable[[Any], torch.Tensor]
    adapt: Callable[[torch.Tensor], Any]
    memory_call: Callable[[Any], Callable[[], torch.Tensor]] | None = None
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"
    _cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return f"{self.impl} {self.spec}" + (f" {self.precision}" if self.precision != "fp32" else "")

    def close(self) -> None:
        for fn in self._cleanup:
            fn()
        self._cleanup.clear()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST[precision])


def _inference(
    fn: Callable[[Any], torch.Tensor], device: torch.device, precision: str
) -> Callable[[Any], torch.Tensor]:
    """fn under inference mode and autocast."""

    def call(x: Any) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            return fn(x)

    return call


def _freezing(fn: Callable[[Any], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
    """fn with inductor freezing on while it runs (compilation happens at the first call of each shape)."""
    import torch._inductor.config as inductor_config

    def call(x: Any) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return fn(x)

    return call


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


ONNX_EXPORTERS = ("auto", "fastvits", "torchscript")


def export_onnx_file(module: nn.Module, example: torch.Tensor, path: Path, exporter: str = "auto") -> tuple[str, bool]:
    """Export `module` (fp32, CPU) for inputs shaped like `example`: (exporter used, batch axis dynamic).

    exporter: `fastvits` is `fastvits.export.export_onnx` (PyTorch's dynamo exporter, dynamic
    batch); `torchscript` is the TorchScript-tracing `torch.onnx.export` at opset 17 with static
    shapes (the tracer turns shape arithmetic on a dynamic batch into graph values that pooling
    kernel sizes cannot take, so each batch size gets its own file); `auto` is `fastvits` when
    `fastvits.export` exists, else `torchscript`. Both implementations of a comparison go through
    the same exporter.
    """
    if exporter not in ONNX_EXPORTERS:
        raise BenchError(f"unknown ONNX exporter {exporter!r}; choose from {', '.join(ONNX_EXPORTERS)}")
    export_onnx = None
    if exporter != "torchscript":
        try:
            from ..export import export_onnx
        except ImportError:
            if exporter == "fastvits":
                raise
    if export_onnx is not None:
        with _quiet_export():
            export_onnx(module, str(path), tuple(example.shape[1:]), dynamic_batch=True)
        return "fastvits.export.export_onnx (dynamic batch)", True
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
        )
    return "torch.onnx.export (TorchScript, opset 17, static shapes)", False


def _check_precision(spec: BackendSpec, precision: str, device: torch.device) -> None:
    """Raise Unsupported for a backend and precision that do not go together (on this machine)."""
    if spec.backend in EXPORTED:
        from ..deploy.runtimes import RuntimeUnavailable, check_runtime

        if device.type != "cpu":
            raise BenchError(f"the {spec.backend} backend runs on the CPU only: use --device cpu")
        if precision == "fp16":
            raise Unsupported(f"{spec.backend} runs no fp16 on the CPU")
        try:
            check_runtime(spec.backend, precision)
        except RuntimeUnavailable as e:
            raise Unsupported(str(e)) from None
    elif precision == "int8":
        raise Unsupported(f"int8 runs in an exported runtime: add --backend onnxruntime or openvino (not {spec})")


def _check_official(spec: BackendSpec) -> None:
    """Raise Unsupported for a spec the official model cannot be timed in."""
    if spec.backend == "compile" and spec.freeze and not spec.reparam:
        raise Unsupported(
            "the official FasterViT assigns new position-bias buffers at every forward outside its deploy mode, so "
            "a frozen graph recompiles at every call (30 s each for FasterViT-0 at 224): use compile+reparam+freeze "
            "(its deploy mode) or compile"
        )


def prepare_runner(
    module: nn.Module,
    impl: str,
    spec: BackendSpec,
    example: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    compile_mode: str | None = None,
    onnx_dir: str | Path | None = None,
    onnx_exporter: str = "auto",
    calibration: CalibrationSet | None = None,
) -> Runner:
    """Turn an eval-mode module into a Runner (the module is modified: pass a copy to keep one).

    `example` is an input of the benchmark's image size: the official model fills its deploy caches with it, and a
    compiled fastvits model its position-encoding tables. onnxruntime and openvino runners export on their first call
    (warm-up) for the input's shape (see `export_onnx_file` for `onnx_exporter`); int8 quantizes that export on
    `calibration`'s images. Raises Unsupported when the backend cannot run `precision`.
    """
    device = torch.device(device)
    _check_precision(spec, precision, device)
    if impl == "official":
        _check_official(spec)
    if precision == "int8" and calibration is None:
        raise BenchError("int8 needs calibration images: pass --calibration DATA")
    module = module.to(device).eval()
    notes: list[str] = []
    autocast_precision = precision if precision in AUTOCAST else "fp32"
    if spec.reparam:
        if impl == "official":
            with torch.no_grad():  # the official deploy caches are filled by a forward
                module(example[:1].to(device))
        from timm.utils.model import reparameterize_model

        module = reparameterize_model(module, inplace=True)
    elif impl == "fastvits" and not spec.plain:
        in_engine = precision in ENGINE_PRECISIONS and spec.backend not in EXPORTED  # fp16 stays with autocast
        module = optimize_for_inference(module, runtime=_RUNTIME[spec.backend],
                                        precision=precision if in_engine else "fp32")
        if in_engine:
            autocast_precision = "fp32"  # the engine casts itself: no autocast around its calls
    if impl == "fastvits" and spec.backend == "compile":  # the graph then reads the position tables as constants
        with torch.no_grad(), autocast(device, autocast_precision):
            module(example[:1].to(device))
    if spec.channels_last:
        module = module.to(memory_format=torch.channels_last)

    def adapt(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        return x.contiguous(memory_format=torch.channels_last) if spec.channels_last else x.contiguous()

    if spec.backend == "eager":
        call = _inference(module, device, autocast_precision)
        return Runner(impl, spec, module, call, adapt, notes=notes, precision=precision)
    if spec.backend == "compile":
        compiled = torch.compile(module, mode=compile_mode, dynamic=False)
        call = _inference(compiled, device, autocast_precision)
        call = _freezing(call) if spec.freeze else call
        return Runner(impl, spec, module, call, adapt, notes=notes, precision=precision)
    return _exported_runner(module, impl, spec, precision, threads or torch.get_num_threads(), onnx_dir,
                            onnx_exporter, calibration, notes)


def _exported_runner(
    module: nn.Module,
    impl: str,
    spec: BackendSpec,
    precision: str,
    threads: int,
    onnx_dir: str | Path | None,
    onnx_exporter: str,
    calibration: CalibrationSet | None,
    notes: list[str],
) -> Runner:
    """An onnxruntime or openvino runner (CPU): the module exported to ONNX (onnxruntime) or converted by OpenVINO's
    PyTorch frontend (openvino) on first use, int8 quantized then."""
    from ..deploy.convert import runtime_model
    from ..deploy.runtimes import onnxruntime_session, openvino_session

    tmp = Path(tempfile.mkdtemp(prefix="fastvits-onnx-", dir=onnx_dir))
    exports: dict[tuple[int, ...] | None, Any] = {}  # input shape (None: any batch) -> ONNX file or openvino.Model
    sessions: dict[tuple[int, ...] | None, Callable[[Any], torch.Tensor]] = {}

    def model_for(shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, Any]:
        """The exported (and quantized) model for inputs of this shape (made on first use, during warm-up)."""
        key = None if None in exports else shape
        if key not in exports:
            # OpenVINO's torch.export needs batch >= 2 to keep the batch dynamic; the TorchScript ONNX exporter
            # fixes the example's shape
            batch = max(2, shape[0]) if spec.backend == "openvino" else shape[0]
            made = runtime_model(module, spec.backend, precision, torch.randn(batch, *shape[1:]),
                                 tmp / f"{impl}_{'x'.join(map(str, shape))}.onnx", calibration,
                                 functools.partial(export_onnx_file, exporter=onnx_exporter))
            if not notes:
                notes.append(f"exported with {made.exported_with}")
            if precision == "int8":
                notes.append(f"int8 ({spec.backend}), kept in fp32: {', '.join(made.kept_in_fp32) or 'nothing'}")
            key = None if made.dynamic_batch else shape
            exports[key] = made.model
        return key, exports[key]

    def session(model: Any, arena: bool = True) -> Callable[[Any], torch.Tensor]:
        run = (onnxruntime_session(model, threads, arena) if spec.backend == "onnxruntime"
               else openvino_session(model, precision, threads))
        return lambda x: torch.from_numpy(run(x))

    def call(x: Any) -> torch.Tensor:
        key, model = model_for(tuple(x.shape))
        if key not in sessions:
            sessions[key] = session(model)
        return sessions[key](x)

    def memory_call(x: Any) -> Callable[[], torch.Tensor]:
        run = session(model_for(tuple(x.shape))[1], arena=False)
        return lambda: run(x)

    runner = Runner(
        impl,
        spec,
        module,
        call,
        lambda x: x.detach().to("cpu", torch.float32).contiguous().numpy(),
        memory_call=memory_call if spec.backend == "onnxruntime" else None,
        notes=notes,
        precision=precision,
    )
    runner._cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    runner._cleanup.append(sessions.clear)
    return runner


def copies(module: nn.Module, n: int) -> list[nn.Module]:
    """`module` itself and n - 1 deep copies (made before anything runs, so no run-time state is copied)."""
    return [module] + [copy.deepcopy(module) for _ in range(n - 1)]
