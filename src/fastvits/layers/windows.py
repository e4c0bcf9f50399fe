"""Token layouts: padding to window multiples and window partitioning.

Every model and layer in fastvits goes through these helpers, so a layout bug can only live here.
Windows are enumerated batch-major, then row-major over the window grid; tokens inside a window are
row-major. That is the order of the official FasterViT and LITv2 code, so checkpoints and
intermediate features line up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_amount", "pad_nhwc", "pad_nchw", "window_partition", "window_reverse"]


def pad_amount(size: int, multiple: int) -> int:
    """How many rows (or columns) to add at the bottom (right) to reach a multiple of `multiple`."""
    return (multiple - size % multiple) % multiple


def pad_nhwc(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom and right to multiples of `window`."""
    ph, pw = pad_amount(x.shape[1], window[0]), pad_amount(x.shape[2], window[1])
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    return x


def pad_nchw(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) map at the bottom and right to multiples of `window`."""
    ph, pw = pad_amount(x.shape[2], window[0]), pad_amount(x.shape[3], window[1])
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Split a (B, H, W, C) map whose sides are window multiples into windows.

    Returns (B * nH * nW, wh * ww, C).
    """
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C)  # (B, nH, wh, nW, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)  # (B*nH*nW, wh*ww, C)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nH * nW, wh * ww, C) -> (B, H, W, C) with (H, W) = `size`."""
    wh, ww = window
    H, W = size
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)  # (B, nH, nW, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)  # (B, H, W, C)
