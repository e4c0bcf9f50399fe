"""HAT inside other networks: carrier tokens added to the window attention of timm's Swin Transformer.

FasterViT (Table 7) shows Hierarchical Attention as a plug-in: Swin-T + HAT. `swin_with_hat` converts a
timm `SwinTransformer` so that, in the chosen stages, every block's window attention works as follows:

1. each window of the (shifted, padded) map gets c x c carrier tokens, initialised by pooling the window's
   tokens (`CarrierTokenInit` with its depthwise conv set to identity: at first a carrier token is the
   mean of its window);
2. the carrier tokens of all windows attend to each other globally, a residual update scaled by a layer
   scale `gamma`. This attention reuses the block's own q/k/v and output projections, with FasterViT's
   continuous relative position bias over the carrier-token grid: the carrier tokens start in the
   feature space of the block's tokens (window means), and the conversion adds no projections, so
   Swin-T + HAT (stages 2 and 3) has 0.45% more parameters than Swin-T (separate q/k/v and output
   projections would add 8.3 M, 29%);
3. each window attends over [its carrier tokens; its tokens] with Swin's own q/k/v and output projections
   and relative position bias (carrier tokens get no position bias and are exempt from the shift mask),
   plus a learned per-head logit offset `key_bias` on the carrier-token keys;
4. optionally the carrier tokens' outputs are propagated back onto their window's tokens (nearest
   upsampling) with a layer scale `gamma_propagate`.

The carrier tokens are rebuilt in every block: Swin's shifted windows change the window grid from one
block to the next, so carrier tokens cannot stay attached to windows across blocks as in FasterViT.

Initialisation keeps the pretrained Swin function: `gamma` and `gamma_propagate` start at zero, so the
carrier tokens start as window means and nothing is propagated. A joint softmax over carrier and window
tokens cannot leave the window tokens' output unchanged while giving the carrier token a gradient, so
`key_bias` starts at -4 (the carrier token then gets about e^-4 of the weight of a typical window token):
the converted model starts within about 1e-4 of Swin (relative), and AdamW moves the offset at the
learning rate from the first step. All Swin parameters keep their names: a Swin checkpoint loads into
the converted model with `load_swin_state_dict`, which refuses anything but the new `.hat.` keys missing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from timm.models.swin_transformer import WindowAttention as SwinWindowAttention
from torch import nn

from .checkpoint import CheckpointError
from .layers import (
    CarrierTokenInit,
    ContinuousRelativeBias,
    ct_to_raster,
    ct_to_windows,
    gather_relative_bias,
    multi_head_attention,
    pad_nhwc,
    prepend_zero_bias,
    propagate_carrier_tokens,
    window_partition,
    window_reverse,
)

__all__ = ["SwinCarrierTokens", "SwinHATBlock", "load_swin_state_dict", "swin_with_hat"]

HAT_KEY = ".hat."  # every parameter the conversion adds lives under a block's `hat` module


class SwinCarrierTokens(nn.Module):
    """What HAT adds to one Swin block; runs the block's window attention with carrier tokens.

    Args:
        dim: channels of the block.
        num_heads: heads of the carrier-token attention and of the block's window attention.
        ct_size: carrier tokens per window side (c).
        propagate: add the carrier tokens' outputs back onto their windows.
        key_bias_init: initial logit offset of the carrier-token keys in the window attention.
    """

    def __init__(
        self, dim: int, num_heads: int, ct_size: int = 1, propagate: bool = True, key_bias_init: float = -4.0
    ) -> None:
        super().__init__()
        self.ct_size = ct_size
        self.tokenizer = CarrierTokenInit(dim, ct_size)
        with torch.no_grad():  # identity depthwise conv: a carrier token starts as the mean of its window
            self.tokenizer.pos_embed.weight.zero_()
            self.tokenizer.pos_embed.weight[:, :, 1, 1] = 1.0
            self.tokenizer.pos_embed.bias.zero_()
        self.norm = nn.LayerNorm(dim)
        self.rel_pos = ContinuousRelativeBias(num_heads)  # over the carrier-token grid
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.key_bias = nn.Parameter(torch.full((num_heads,), key_bias_init))
        self.gamma_propagate = nn.Parameter(torch.zeros(dim)) if propagate else None

    def carrier_tokens(self, x: torch.Tensor, grid: tuple[int, int], attn: SwinWindowAttention) -> torch.Tensor:
        """Carrier tokens of a padded (B, Hp, Wp, C) map after their global attention -> (B, nW, c*c, C)."""
        B, _, _, C = x.shape
        c = self.ct_size
        ct = ct_to_raster(self.tokenizer(x.permute(0, 3, 1, 2), grid, attn.window_size), grid, c)  # (B, N_ct, C) raster
        bias = self.rel_pos((grid[0] * c, grid[1] * c), ct.shape[1])  # (1, h, N_ct, N_ct)
        update = multi_head_attention(self.norm(ct), attn.qkv, attn.proj, attn.num_heads, attn.scale, bias)
        ct = ct + self.gamma * update
        return ct_to_windows(ct, grid, c).view(B, -1, c * c, C)  # (B, nW, c*c, C)

    def window_attention(
        self, windows: torch.Tensor, ct: torch.Tensor, attn: SwinWindowAttention, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Swin's attention over [carrier tokens; window tokens] of each window.

        windows: (B, nW, N, C); ct: (B, nW, c*c, C); mask: Swin's (nW, N, N) shift mask or None.
        Returns the window tokens' output (B, nW, N, C).
        """
        B, nW, N, C = windows.shape
        n_ct = ct.shape[2]
        bias = gather_relative_bias(attn.relative_position_bias_table, attn.window_size)  # (h, N, N)
        bias = bias.unsqueeze(0) if mask is None else bias + mask.unsqueeze(1)  # (1 or nW, h, N, N)
        bias = prepend_zero_bias(bias, n_ct)  # (1 or nW, h, M, M), M = c*c + N
        key_bias = nn.functional.pad(self.key_bias.view(-1, 1, 1).expand(-1, 1, n_ct), (0, N))  # (h, 1, M)
        tokens = torch.cat([ct, windows], dim=2)  # (B, nW, M, C)
        out = multi_head_attention(tokens, attn.qkv, attn.proj, attn.num_heads, attn.scale, bias + key_bias)
        ct_out, out = out.split([n_ct, N], dim=2)  # (B, nW, c*c, C), (B, nW, N, C)
        if self.gamma_propagate is not None:
            up = propagate_carrier_tokens(ct_out.reshape(B * nW, n_ct, C), self.ct_size, attn.window_size)
            out = out + self.gamma_propagate * up.view(B, nW, N, C)
        return out

    def forward(self, x: torch.Tensor, attn: SwinWindowAttention, mask: torch.Tensor | None) -> torch.Tensor:
        """x: the block's (shifted, padded) (B, Hp, Wp, C) map -> the attention output, same shape."""
        B, Hp, Wp, C = x.shape
        window = attn.window_size
        grid = (Hp // window[0], Wp // window[1])
        windows = window_partition(x, window).view(B, -1, window[0] * window[1], C)  # (B, nW, N, C)
        out = self.window_attention(windows, self.carrier_tokens(x, grid, attn), attn, mask)  # (B, nW, N, C)
        return window_reverse(out.reshape(-1, window[0] * window[1], C), window, (Hp, Wp))  # (B, Hp, Wp, C)


class SwinHATBlock(SwinTransformerBlock):
    """A timm Swin block whose window attention runs through its `hat` module (`SwinCarrierTokens`).

    Only `_attn` changes: cyclic shift and padding as in timm, then HAT's window attention.
    """

    hat: SwinCarrierTokens

    @classmethod
    def convert(cls, block: SwinTransformerBlock, hat: SwinCarrierTokens) -> SwinHATBlock:
        """Turn `block` into a HAT block in place; its parameters and their names stay as they are.

        Changing the class of the existing object (rather than wrapping it) is what keeps every Swin key,
        so Swin checkpoints load unchanged.
        """
        block.__class__ = cls
        block.hat = hat.to(block.norm1.weight.device, block.norm1.weight.dtype)
        return block  # type: ignore[return-value]

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalised (B, H, W, C) -> attention output (B, H, W, C)."""
        _, H, W, _ = x.shape
        shift = self.shift_size
        if any(shift):
            x = torch.roll(x, (-shift[0], -shift[1]), dims=(1, 2))
        x = pad_nhwc(x, self.window_size)  # (B, Hp, Wp, C)
        mask = self.get_attn_mask(x) if self.dynamic_mask else self.attn_mask
        x = self.hat(x, self.attn, mask)[:, :H, :W]  # (B, H, W, C)
        if any(shift):
            x = torch.roll(x, shift, dims=(1, 2))
        return x


def swin_with_hat(
    model: SwinTransformer,
    stages: Sequence[int] = (2, 3),
    ct_size: int = 1,
    propagate: bool = True,
    key_bias_init: float = -4.0,
) -> SwinTransformer:
    """A copy of a timm Swin Transformer with HAT in the blocks of `stages` (0-based); `model` is unchanged.

    Args:
        model: a timm `SwinTransformer` (e.g. `timm.create_model("swin_tiny_patch4_window7_224")`).
        stages: the stages whose blocks get carrier tokens.
        ct_size: carrier tokens per window side.
        propagate: propagate the carrier tokens back onto their windows.
        key_bias_init: initial logit offset of the carrier-token keys (see the module docstring).
    """
    if not isinstance(model, SwinTransformer):
        raise TypeError(f"swin_with_hat expects a timm SwinTransformer, got {type(model).__name__}")
    bad = [s for s in stages if not 0 <= s < len(model.layers)]
    if bad:
        raise ValueError(f"stages {bad} do not exist: the model has stages 0..{len(model.layers) - 1}")
    model = copy.deepcopy(model)
    for s in stages:
        for block in model.layers[s].blocks:
            hat = SwinCarrierTokens(block.dim, block.attn.num_heads, ct_size, propagate, key_bias_init)
            SwinHATBlock.convert(block, hat)
    return model


def load_swin_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a Swin state dict into a `swin_with_hat` model: strict for every Swin key.

    Only the parameters HAT added may be missing (they keep their initialisation); anything else missing,
    unexpected or mis-shaped raises a `CheckpointError` that lists it.
    """
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"the Swin state dict does not fit the model: {e}") from None
    missing = [k for k in missing if HAT_KEY not in k]
    if missing or unexpected:
        raise CheckpointError(f"Swin state dict mismatch: missing {missing}, unexpected {list(unexpected)}")
