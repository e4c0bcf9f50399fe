"""What every fastvits model family shares: input validation, pretrained cfgs, variant registration."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model

from ..checkpoint import convert_state_dict

__all__ = ["MIN_INPUT_SIZE", "base_cfg", "check_image_input", "register_variants"]

# every model pads internally; below 32 pixels the last stage would be empty
MIN_INPUT_SIZE = 32


def check_image_input(x: torch.Tensor, in_chans: int, min_size: int, model_name: str) -> None:
    """Raise a ValueError naming the problem and the fix for anything but a (B, in_chans, H, W) float image batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model_name} expects a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise ValueError(
            f"{model_name} expects a 4-D image batch (B, {in_chans}, H, W), got shape {tuple(x.shape)}.{hint}"
        )
    if x.shape[1] != in_chans:
        hint = " The input looks channels-last: use x.permute(0, 3, 1, 2)." if x.shape[-1] == in_chans else ""
        raise ValueError(
            f"{model_name} was built for {in_chans} input channels but got {x.shape[1]} (shape {tuple(x.shape)}).{hint}"
            f" Convert the images, or build the model with in_chans={x.shape[1]}."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{model_name} expects a floating-point image tensor, got {x.dtype}. Convert and normalise it first, "
            "e.g. x.float() / 255 followed by the model's mean/std normalisation."
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{model_name} needs images of at least {min_size}x{min_size} pixels, got {x.shape[2]}x{x.shape[3]}. "
            f"Resize or pad the input to at least {min_size} pixels per side."
        )


def base_cfg(url: str, **kwargs: Any) -> dict[str, Any]:
    """Pretrained-cfg fields shared by every fastvits model; weights load through `fastvits.load_checkpoint`."""
    return {
        "url": url,
        "custom_load": True,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (7, 7),
        "fixed_input_size": False,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": "head",
        **kwargs,
    }


def register_variants(model_cls: type[nn.Module], variants: dict[str, tuple[dict[str, Any], float, dict]]) -> None:
    """Register one timm entrypoint per variant: `name(pretrained=False, **overrides)`.

    Weights from any source timm resolves (url, `pretrained_cfg_overlay=dict(file=...)`) pass through
    `convert_state_dict`, which converts official layouts and refuses anything but an exact fit (a new
    classifier excepted), so timm's own non-strict fallback never hides a mismatch.
    """
    for name, (args, _, _) in variants.items():

        def entrypoint(pretrained: bool = False, _name: str = name, _args: dict = args, **kwargs: Any) -> nn.Module:
            return build_model_with_cfg(
                model_cls,
                _name,
                pretrained,
                pretrained_filter_fn=convert_state_dict,
                feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
                **dict(_args, **kwargs),
            )

        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = model_cls.__module__
        entrypoint.__doc__ = f"{model_cls.__name__} variant `{name}`."
        register_model(entrypoint)
