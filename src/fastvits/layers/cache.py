"""Caching of tensors that depend only on weights and input size (position biases, folded weights).

In eval mode without autograd, a module computes such a tensor once per key (grid size, device,
dtype) and reuses it. The cache is dropped when the module goes back to training, moves to another
device or dtype, or when any of its parameters or buffers changes (load_state_dict, optimizer steps: PyTorch
bumps a tensor's version counter on every in-place write; writes through `.data` bypass it, so callers who
use them call `.eval()` again, which drops the cache). Tracing, exporting and compiling always
compute in-graph, so exported graphs carry the computation rather than a stale constant; only an
inference-only (`fuse()`d) module hands its cached values to torch.compile.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Hashable, TypeVar

import torch
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["CachedByInput", "cached_constant", "is_concrete", "is_exporting"]

Factory = TypeVar("Factory", bound=Callable[..., torch.Tensor | None])
T = TypeVar("T")


def _jit() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def is_exporting() -> bool:
    """True while torch.compile, torch.export, torch.jit or torch.onnx is capturing a graph.

    Both ONNX exporters run the model under one of the others (TorchScript's tracer, or torch.export, during which
    `torch.compiler.is_compiling()` holds), so no ONNX check is needed: it would cost more than all of these.
    """
    return torch.compiler.is_compiling() or _jit()


def is_concrete(*sizes: int) -> bool:
    """False if a size is symbolic (`torch.compile(dynamic=True)`, torch.export), True for plain ints (eager,
    TorchScript, static graphs).

    Inside a graph being captured a symbolic size does not show as one (dynamo hides `isinstance(n, torch.SymInt)`),
    but nothing can be proved about it without a guard: an int is even or odd, a symbol is neither as far as
    `statically_known_true` is concerned (a symbol of provable parity would count as concrete and cost a
    recompilation per value, never a wrong result). Outside torch.compile / torch.export sizes are ints: no check.
    """
    if not torch.compiler.is_compiling():
        return True
    return all(statically_known_true(n % 2 == 0) or statically_known_true(n % 2 == 1) for n in sizes)


def _portable_export() -> bool:
    """True while torch.export, ONNX or TorchScript capture a graph: those carry computations, not cached values."""
    return torch.compiler.is_exporting() or _jit()


def cached_constant(maxsize: int) -> Callable[[Factory], Factory]:
    """Memoise a tensor factory of hashable arguments (index tables, masks) that depends on nothing else.

    The tensors are built outside inference mode, so a table first made under `torch.inference_mode()`
    can still be used later in a computation that autograd records. While a graph is being captured the
    factory runs in-graph instead of returning a cached constant.
    """

    def wrap(fn: Factory) -> Factory:
        @functools.lru_cache(maxsize=maxsize)
        def build(*args):
            with torch.inference_mode(False):
                return fn(*args)

        @functools.wraps(fn)
        def call(*args):
            return fn(*args) if is_exporting() else build(*args)

        return call  # type: ignore[return-value]

    return wrap


_structure_epoch = 0
"""Bumped whenever any module anywhere registers (or replaces) a parameter, buffer or submodule: `CachedByInput`
then rebuilds its list of weight tensors before reading their versions."""


def _structure_changed(*_: Any) -> None:
    global _structure_epoch
    _structure_epoch += 1


nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
nn.modules.module.register_module_buffer_registration_hook(_structure_changed)
nn.modules.module.register_module_module_registration_hook(_structure_changed)


def _autocast_state() -> tuple:
    return tuple(
        torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None for d in ("cpu", "cuda")
    )


class CachedByInput(nn.Module):
    """Base class for modules that cache values derived from their weights (and the input size) at inference."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # cooperative: `class L(CachedByInput, nn.Linear)`
        super().__init__(*args, **kwargs)
        self._cache: dict[Hashable, Any] = {}
        self._stamp: tuple = ()
        self._weights: list[torch.Tensor] = []
        self._weights_epoch = -1

    def _weights_stamp(self) -> tuple:
        """Address and version of every parameter and buffer of the module and its submodules: any in-place write,
        `load_state_dict`, `.to()` or replacement changes it. The tensor list is rebuilt only after a registration
        (walking the submodules cost up to 10 us per call, 3% of a batch-1 FasterViT-0 forward)."""
        if self._weights_epoch != _structure_epoch:
            self._weights = [
                t
                for m in self.modules()
                for t in itertools.chain(m._parameters.values(), m._buffers.values())
                if t is not None
            ]
            self._weights_epoch = _structure_epoch
        # inference tensors (made under torch.inference_mode) have no version counter: their address stands alone
        return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in self._weights)

    frozen = False  # set by fuse(): compiled graphs read cached values instead of recomputing them

    def fuse(self) -> CachedByInput:
        """Mark the module inference-only (timm's `reparameterize_model`, `fastvits.optimize_for_inference`).

        Under `torch.compile` a frozen module reads the values an eager forward cached (same input size, device,
        dtype and autocast state) instead of recomputing them in the graph, as the official deploy mode keeps its
        position biases in buffers (with inductor freezing they become constants); sizes not seen in eager are
        computed in-graph. The cache is still refreshed by eager forwards after a weight change.
        """
        self.frozen = True
        return self

    def computes_in_graph(self) -> bool:
        """True while a graph is captured that must carry the computation: always, except torch.compile of an
        inference-only module, which reads what eager cached. The caller can then skip building a cache key, and
        its sizes stay symbolic under `torch.compile(dynamic=True)` (a key would make them Python ints)."""
        return is_exporting() and not (self.frozen and not _portable_export())

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        if self.training or torch.is_grad_enabled() or self.computes_in_graph():
            return compute()
        key = (key, _autocast_state())
        if is_exporting():  # torch.compile of an inference-only model: what eager cached, if it did
            value = self._cache.get(key)
            return compute() if value is None else value
        return self.cached_eager(key, compute)

    def cached_eager(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`cached` for callers that already know they run eagerly at inference (no autograd, no graph capture, no
        autocast: `fastvits.layers.fused.fusable`), without re-checking."""
        stamp = self._weights_stamp()
        if stamp != self._stamp:
            self._cache.clear()
            self._stamp = stamp
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = compute()
        return value

    def clear_cache(self) -> None:
        """Drop the cached values and the weight list (which would keep replaced tensors alive)."""
        self._cache.clear()
        self._stamp = ()
        self._weights = []
        self._weights_epoch = -1

    def train(self, mode: bool = True) -> "CachedByInput":
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # .to(), .half(), .cuda() ...
        self.clear_cache()  # it may also put new Parameter objects into `_parameters` without a registration
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:  # copy.deepcopy / pickle never carry a cache
        state = self.__dict__.copy()
        state.update(_cache={}, _stamp=(), _weights=[], _weights_epoch=-1)
        return state
