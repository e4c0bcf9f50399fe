"""Token layouts: padding to window multiples and window partitioning.

Every model and layer in fastvits goes through these helpers, so a layout bug can only live here.
Windows are enumerated batch-major, then row-major over the window grid; tokens inside a window are
row-major. That is the order of the official FasterViT and LITv2 code, so checkpoints and
intermediate features line up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = [
    "crop_nhwc",
    "is_static",
    "pad_amount",
    "pad_nchw",
    "pad_nhwc",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]


def is_static(*sizes: int) -> bool:
    """False if a size is symbolic (`torch.compile(dynamic=True)`, `torch.export` with dynamic shapes), True for
    plain ints (eager, static graphs, TorchScript).

    Layers use the forms that serve every size of a symbolic graph (pad by a possibly zero amount, crop by a
    gather, pool by matrix products) only where sizes are symbolic, and the official ops elsewhere. torch.export
    hands the model `torch.SymInt`s; inside torch.compile's dynamo a symbolic size does not show as one
    (`isinstance(n, torch.SymInt)` is False there), but nothing can be proved about it without a guard: an int is
    even or odd, a symbol is neither as far as `statically_known_true` is concerned (one of provable parity, such as
    2 * k, counts as static under dynamo and costs a recompilation per value, never a wrong result).
    """
    if not torch.compiler.is_compiling():
        return True
    if any(isinstance(n, torch.SymInt) for n in sizes):
        return False
    return all(statically_known_true(n % 2 == 0) or statically_known_true(n % 2 == 1) for n in sizes)


def pad_amount(size: int, multiple: int) -> int:
    """How many rows (or columns) to add at the bottom (right) to reach a multiple of `multiple`.

    Written as ceil(size / multiple) * multiple - size: under `torch.compile(dynamic=True)` the padded size is
    then a product (windows x window), which keeps the symbolic shapes downstream small and exact.
    """
    return (size + multiple - 1) // multiple * multiple - size


def _must_pad(ph: int, pw: int) -> bool:
    """Whether to pad by (ph, pw). With symbolic sizes (`torch.compile(dynamic=True)`) always, possibly by zero: the
    padded size is then `windows x window` for every input size, a product that the reshapes into windows divide
    exactly, instead of a case split on the size (hence the symbolic check first: `ph or pw` would be a guard)."""
    return not is_static(ph, pw) or bool(ph or pw)


def pad_nhwc(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom and right to multiples of `window`."""
    ph, pw = pad_amount(x.shape[1], window[0]), pad_amount(x.shape[2], window[1])
    return F.pad(x, (0, 0, 0, pw, 0, ph)) if _must_pad(ph, pw) else x


def pad_nchw(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) map at the bottom and right to multiples of `window`."""
    ph, pw = pad_amount(x.shape[2], window[0]), pad_amount(x.shape[3], window[1])
    return F.pad(x, (0, pw, 0, ph)) if _must_pad(ph, pw) else x


def crop_nhwc(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The top-left `size` of a (B, Hp, Wp, C) map as a new contiguous (B, H, W, C) tensor, taken by one gather.

    For symbolic sizes: a slice is contiguous only when nothing was cropped, so a graph that slices must guard on
    whether the size needed padding; a gather's output is the same for every size.
    """
    B, Hp, Wp, C = x.shape
    H, W = size
    rows = torch.arange(H, device=x.device)[:, None] * Wp  # (H, 1)
    index = (rows + torch.arange(W, device=x.device)).view(H * W)  # (H*W,) flat positions in the padded map
    return x.reshape(B, Hp * Wp, C).index_select(1, index).view(B, H, W, C)  # (B, H, W, C)


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Split a (B, H, W, C) map whose sides are window multiples into windows.

    Returns (B * nH * nW, wh * ww, C).
    """
    B, H, W, C = x.shape
    wh, ww = window
    nH, nW = H // wh, W // ww
    x = x.view(B, nH, wh, nW, ww, C)  # (B, nH, wh, nW, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B * nH * nW, wh * ww, C)  # (B*nH*nW, wh*ww, C)


def window_reverse(
    windows: torch.Tensor, window: tuple[int, int], size: tuple[int, int], batch: int | None = None
) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nH * nW, wh * ww, C) -> (B, H, W, C) with (H, W) = `size`.

    Callers that know B pass it as `batch`: under `torch.compile(dynamic=True)` dividing the window count back
    out leaves a nested symbolic expression that grows with every block.
    """
    wh, ww = window
    H, W = size
    C = windows.shape[-1]
    nH, nW = H // wh, W // ww
    B = windows.shape[0] // (nH * nW) if batch is None else batch
    x = windows.view(B, nH, nW, wh, ww, C)  # (B, nH, nW, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)  # (B, H, W, C)


def shifted_window_mask(size: tuple[int, int], window: int, shift: int, device: torch.device) -> torch.Tensor | None:
    """(nW, w*w, w*w) additive mask (0 or -inf) for window attention on an H x W map, or None if nothing is masked.

    The map is zero-padded at the bottom/right to window multiples, then cyclically shifted up and left by
    `shift` (Swin's shifted windows). A token attends only to tokens of its own region: the rows and
    columns the shift wrapped around are cut off from the others, as in Swin, and padding is cut off
    from real tokens, so the output on real tokens does not depend on the padding. Every token keeps at
    least itself, so no row of the mask is all -inf.
    """
    H, W = size
    Hp, Wp = H + pad_amount(H, window), W + pad_amount(W, window)
    if not shift and (Hp, Wp) == (H, W):
        return None
    rows = torch.arange(Hp, device=device)[:, None]  # (Hp, 1)
    cols = torch.arange(Wp, device=device)[None, :]  # (1, Wp)
    # Label every position of the padded map: padding is -1; real tokens are 0..3 by whether the cyclic
    # shift wraps their row and/or column to the other side of the map.
    label = (rows < shift).long() * 2 + (cols < shift).long()  # (Hp, Wp)
    label = label.masked_fill((rows >= H) | (cols >= W), -1)
    label = torch.roll(label, (-shift, -shift), dims=(0, 1))
    windows = window_partition(label[None, :, :, None], (window, window)).squeeze(-1)  # (nW, w*w)
    different = windows[:, :, None] != windows[:, None, :]  # (nW, w*w, w*w)
    return torch.zeros(different.shape, device=device).masked_fill(different, float("-inf"))

