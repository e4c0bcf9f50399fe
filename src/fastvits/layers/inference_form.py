"""The hook by which timm's `reparameterize_model` reaches fastvits' inference engine."""

from __future__ import annotations

from torch import nn

__all__ = ["InferenceForm"]


class InferenceForm:
    """Mixin for modules with an inference form: `fuse()`, the method `timm.utils.reparameterize_model` calls
    (timm's benchmark `--reparam`), returns the module converted by `fastvits.optimize_for_inference`'s engine."""

    def fuse(self) -> nn.Module:
        from ..inference import optimize_module

        return optimize_module(self)  # type: ignore[arg-type]
