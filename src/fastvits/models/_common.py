"""Input validation shared by every fastvits model."""

from __future__ import annotations

import torch

__all__ = ["check_image_input"]


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
