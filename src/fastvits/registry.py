"""Model creation by name, accepting the official package's names as aliases.

The models are registered with timm under their own names (`fastervit_0_224`, ...) so that the
official `fastervit` package (which registers `faster_vit_0_224`, ...) can be imported alongside.
`fastvits.create_model` also accepts the official spelling.
"""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

from .models.fastervit import default_cfgs as FASTERVIT_CFGS
from .models.litv2 import default_cfgs as LITV2_CFGS

__all__ = ["create_model", "list_models", "resolve_name"]

_ALIASES = {"faster_vit_": "fastervit_"}


def resolve_name(name: str) -> str:
    """Map an official model name to the fastvits name (`faster_vit_0_224` -> `fastervit_0_224`)."""
    for official, ours in _ALIASES.items():
        if name.startswith(official):
            return ours + name[len(official) :]
    return name


def list_models(pattern: str = "*") -> list[str]:
    """Names of all fastvits models matching a wildcard pattern."""
    return sorted(n for n in timm.list_models(pattern) if n.split(".")[0] in _names())


def _names() -> set[str]:
    return set(FASTERVIT_CFGS) | set(LITV2_CFGS)


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """`timm.create_model` for fastvits names and their official aliases."""
    resolved = resolve_name(name)
    if resolved.split(".")[0] not in _names():
        raise ValueError(f"unknown fastvits model {name!r}; available: {', '.join(sorted(_names()))}")
    return timm.create_model(resolved, pretrained=pretrained, **kwargs)
