"""LITv2 (Pan et al., NeurIPS 2022, "Fast Vision Transformers with HiLo Attention").

Read top to bottom: patch embedding, the ConvFFN, the block, deformable token merging, the stage, the model,
checkpoint conversion, pretrained configs, and one registered function per variant. HiLo is `fastvits.layers.hilo`.

Four stages at strides 4, 8, 16, 32. The first two stages have no attention at all (LayerNorm + an MLP
with a depthwise 3x3 conv, the "ConvFFN"); the last two use HiLo attention (`fastvits.layers.HiLo`)
followed by the ConvFFN. Between stages, deformable token merging (DTM) halves the resolution with a
2x2/2 deformable convolution whose sampling offsets are predicted from the input.

Written from the paper and the published architecture facts; parameter names follow the official
checkpoints except for two renames done by `checkpoint_filter_fn`. One model serves classification and
dense prediction, on any H x W >= 32 (the official dense-prediction behaviour everywhere): the image is
zero-padded at the bottom/right to a multiple of 4, HiLo pads its map to window multiples and crops
back, and DTM floors odd sizes. On square inputs divisible by 32 this is the official classifier.

Deformable convolution runs through `torchvision.ops.deform_conv2d` (CPU and CUDA; it equals the
official CUDA-only extension, see docs/litv2.md) and exports to ONNX `DeformConv` (`fastvits.export`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model
from torchvision.ops import deform_conv2d

from ..checkpoint import register_checkpoint_filter
from ..layers import HiLo, pad_nchw
from ._common import (
    Stage,
    StagedModel,
    autocast_enabled,
    base_cfg,
    build_model,
    init_linear,
    stage_drop_path_rates,
)

__all__ = [
    "ConvFFN",
    "DeformConv2dPack",
    "DeformableTokenMerging",
    "IMAGENET_TOP1",
    "LITv2",
    "map_to_tokens",
    "tokens_to_map",
]


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) row-major tokens (a view when the map has channels-last strides)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) (a view of contiguous tokens, with channels-last strides)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)


# -------------------------------------------------------------------------------------------------- blocks
class PatchEmbed(nn.Module):
    """Non-overlapping patches (the image is zero-padded to a multiple of the patch size), then LayerNorm."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4, norm: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(pad_nchw(x, (self.patch_size, self.patch_size)))  # (B, C, H/4, W/4)
        _, _, H, W = x.shape
        return tokens_to_map(self.norm(map_to_tokens(x)), H, W)


class ConvFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv on the map -> GELU -> fc2 (official `DWMlp`); no activation before the conv."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x: (B, H*W, C) tokens -> (B, H*W, C)."""
        h = tokens_to_map(self.fc1(x), H, W)  # (B, hidden, H, W); channels-last strides, as the official code
        h = self.drop(self.act(map_to_tokens(self.dwconv(h))))  # GELU on the tokens (official op order); (B, N, hidden)
        return self.drop(self.fc2(h))


class LITBlock(nn.Module):
    """Pre-norm residual block: [HiLo attention] then ConvFFN.

    `window_size=0` gives the attention-free block of the first two stages (no `norm1`/`attn`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        alpha: float,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        drop_path: float = 0.0,
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        if window_size > 0:
            self.norm1 = nn.LayerNorm(dim, eps=1e-5)
            self.attn = HiLo(
                dim, num_heads, window_size=window_size, alpha=alpha, qkv_bias=qkv_bias, qk_scale=qk_scale,
                fused_attn=fused_attn, channels_last=True,
            )
        else:
            self.norm1 = self.attn = None
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x: (B, H*W, C) tokens."""
        if self.attn is not None:
            B, N, C = x.shape
            y = self.attn(self.norm1(x).view(B, H, W, C))  # tokens as a (B, H, W, C) map, HiLo's native layout
            x = x + self.drop_path(y.reshape(B, N, C))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class DeformConv2dPack(nn.Module):
    """Deformable convolution (v1) whose offsets are predicted from its own input by a regular conv.

    `weight`, `bias` and `conv_offset` are laid out as in the official `DeformConv2dPack`; offsets have 2 channels
    per kernel tap (row-major taps), y (row) first, then x. `conv_offset` starts at zero, so an untrained layer is an
    ordinary convolution. Runs `torchvision.ops.deform_conv2d` in float32 for half-precision inputs and under
    autocast: its CPU kernel has no bf16 path, and torchvision's own CUDA autocast wrapper does the same.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_chans))
        self.conv_offset = nn.Conv2d(in_chans, 2 * kernel_size * kernel_size, kernel_size, stride, padding)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)  # (B, 2*k*k, Ho, Wo)
        s, p = (self.stride, self.stride), (self.padding, self.padding)
        if x.dtype not in (torch.float16, torch.bfloat16) and not autocast_enabled(x.device.type):
            return deform_conv2d(x, offset, self.weight, self.bias, stride=s, padding=p)
        with torch.autocast(x.device.type, enabled=False):
            out = deform_conv2d(x.float(), offset.float(), self.weight.float(), self.bias.float(), stride=s, padding=p)
        return out.to(x.dtype)


class DeformableTokenMerging(nn.Module):
    """DTM: 2x2/2 deformable conv doubling the channels, BatchNorm, GELU. Odd sides are floored."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.dconv = DeformConv2dPack(dim, out_dim, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm2d(out_dim, eps=1e-5)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NCHW-contiguous input: channels-last strides change the convs by ulps, which bilinear sampling amplifies.
        return self.act(self.norm(self.dconv(x.contiguous())))


# --------------------------------------------------------------------------------------------------- stage
class LITStage(Stage):
    """Blocks at one resolution (one per drop-path rate), then DTM (all stages but the last)."""

    def __init__(self, dim: int, drop_path: Sequence[float], downsample: bool, **block_args: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([LITBlock(dim, drop_path=rate, **block_args) for rate in drop_path])
        self.downsample = DeformableTokenMerging(dim, 2 * dim) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        _, _, H, W = x.shape
        x = map_to_tokens(x)  # (B, N, C)
        for blk in self.blocks:
            x = self.call_block(blk, x, H, W)
        return tokens_to_map(x, H, W)  # (B, C, H, W)


# --------------------------------------------------------------------------------------------------- model
def _stage_windows(has_msa: Sequence[int], local_ws: Sequence[int]) -> list[int]:
    """HiLo window per stage (0: no attention) from the official pair of settings, refusing contradictions."""
    if not len(has_msa) == len(local_ws) == 4:
        raise ValueError(f"has_msa and local_ws need one entry per stage (4 stages), got {has_msa} and {local_ws}")
    windows = []
    for i, (msa, ws) in enumerate(zip(has_msa, local_ws)):
        if msa and ws < 1:
            raise ValueError(
                f"stage {i} has attention (has_msa[{i}]=1) but local_ws[{i}]={ws}: give it a HiLo window of at "
                f"least 1 (1 is plain global attention), or has_msa[{i}]=0 for an attention-free stage"
            )
        if not msa and ws:
            raise ValueError(
                f"stage {i} has no attention (has_msa[{i}]=0) but a HiLo window local_ws[{i}]={ws}: set "
                f"local_ws[{i}]=0, or has_msa[{i}]=1 for HiLo attention in that stage"
            )
        windows.append(ws if msa else 0)
    return windows


class LITv2(StagedModel):
    """LITv2 classifier and multi-scale backbone (any input size >= 32).

    The keywords are the official constructor's, so a config written for the official code builds the same model.

    Args:
        img_size: accepted for the official keyword and without effect: every fastvits model runs any input size.
        patch_size: side of the non-overlapping patches of the stem.
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        embed_dim: channels of the first stage; stage i has embed_dim * 2**i.
        depths: blocks per stage.
        num_heads: attention heads per stage (used where has_msa is 1).
        mlp_ratio: ConvFFN hidden width relative to the stage width.
        qkv_bias: biases on the HiLo query/key/value projections.
        qk_scale: HiLo attention scale, default head_dim ** -0.5.
        drop_rate: dropout inside the ConvFFN (after GELU and after fc2).
        attn_drop_rate: accepted and without effect, as in the official code (HiLo has no dropout); a non-zero
            value warns.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        ape: accepted and without effect, as in the official code (LITv2 has no absolute position embedding); True
            warns.
        patch_norm: LayerNorm after the patch embedding.
        use_checkpoint: gradient checkpointing in every stage (`set_grad_checkpointing`).
        has_msa: per stage, 1 for HiLo attention in every block, 0 for attention-free (ConvFFN-only) blocks.
        alpha: fraction of Lo-Fi heads in HiLo (truncated: int(num_heads * alpha)).
        local_ws: HiLo window per stage: 0 where has_msa is 0; 1 is plain global attention. The official models
            use (0, 0, 2, 1).
        global_pool: 'avg' or '' (no pooling in forward_head).
        fused_attn: `F.scaled_dot_product_attention` instead of the official matmul-softmax order (saves memory in
            GPU training; `fastvits.optimize_for_inference` turns it on where it is faster).
    """

    stage_attr = "layers"

    def __init__(
        self,
        img_size: int | Sequence[int] | None = None,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        has_msa: Sequence[int] = (0, 0, 1, 1),
        alpha: float = 0.9,
        local_ws: Sequence[int] = (0, 0, 2, 1),
        global_pool: str = "avg",
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        if not len(depths) == len(num_heads) == 4:
            raise ValueError("depths and num_heads need one entry per stage (4 stages)")
        windows = _stage_windows(has_msa, local_ws)
        if attn_drop_rate:
            warnings.warn("LITv2 has no attention dropout: attn_drop_rate has no effect (as in the official code)")
        if ape:
            warnings.warn("LITv2 has no absolute position embedding: ape=True has no effect (as in the official code)")
        self._init_classifier(in_chans, num_classes, global_pool, int(embed_dim * 2 ** (len(depths) - 1)))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=patch_norm)
        layers = []
        for i, rates in enumerate(stage_drop_path_rates(drop_path_rate, depths)):
            dim = int(embed_dim * 2**i)
            layers.append(
                LITStage(
                    dim, rates, downsample=i < len(depths) - 1, num_heads=num_heads[i], window_size=windows[i],
                    alpha=alpha, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                    fused_attn=fused_attn,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * 2**i, module=f"layers.{i}"))
        self.layers = nn.ModuleList(layers)
        self._build_head(nn.LayerNorm(self.num_features, eps=1e-5))
        self.apply(self._init_weights)
        self.set_grad_checkpointing(use_checkpoint)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The official scheme: truncated-normal linears, fan-out normal depthwise convs; others keep their own."""
        init_linear(m)
        if isinstance(m, ConvFFN):
            fan_out = m.dwconv.kernel_size[0] * m.dwconv.kernel_size[1] * m.dwconv.out_channels // m.dwconv.groups
            nn.init.normal_(m.dwconv.weight, 0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(m.dwconv.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # no position tables or layer scales; timm already exempts biases and norms

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)"
            if coarse
            else [
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^layers\.(\d+)\.downsample", (99999,)),
                (r"^norm", (99999,)),
            ],
        )

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm over channels of a (B, C, H, W) map; returns a (B, C, H, W) view of the normed tokens."""
        _, _, H, W = x.shape
        return tokens_to_map(self.norm(map_to_tokens(x)), H, W)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool1d(x.flatten(2), 1).flatten(1)  # token mean, (B, C)
        return x if pre_logits else self.head(x)


# ------------------------------------------------------------------------------------------- checkpoints
_RENAMES = ((".mlp.dwconv.dwconv.", ".mlp.dwconv."), (".downsample.norm_layer.", ".downsample.norm."))


@register_checkpoint_filter(LITv2)
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official LITv2 layout -> fastvits layout: two renames, nothing dropped.

    `mlp.dwconv.dwconv.*` -> `mlp.dwconv.*` (the official wrapper module is gone) and
    `downsample.norm_layer.*` -> `downsample.norm.*`. fastvits checkpoints pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        for old, new in _RENAMES:
            k = k.replace(old, new)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------- pretrained cfgs
def _cfg(file: str, **kwargs: Any) -> dict[str, Any]:
    return base_cfg(
        **{
            "url": f"https://github.com/ziplab/LITv2/releases/download/v1.0/{file}",
            "crop_pct": 0.875,  # resize the short side to 256, centre crop 224
            "first_conv": "patch_embed.proj",
            "license": "apache-2.0",
            "paper_ids": "arXiv:2205.13213",
            "paper_name": "Fast Vision Transformers with HiLo Attention",
            "origin_url": "https://github.com/ziplab/LITv2",
            **kwargs,
        }
    )


default_cfgs = generate_default_cfgs(
    {
        "litv2_s.in1k": _cfg("litv2_s.pth"),
        "litv2_m.in1k": _cfg("litv2_m.pth"),
        "litv2_b.in1k": _cfg("litv2_b.pth"),
        # fine-tuned at 384 and evaluated with a direct resize to 384x384 (no crop)
        "litv2_b_384.in1k": _cfg(
            "litv2_b_384.pth", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode="squash"
        ),
    }
)

IMAGENET_TOP1 = {"litv2_s": 82.0, "litv2_m": 83.3, "litv2_b": 83.6, "litv2_b_384": 84.7}  # official, ImageNet-1K


# -------------------------------------------------------------------------------------------------- variants
def _create_litv2(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> LITv2:
    return build_model(LITv2, variant, pretrained, **dict(model_args, **kwargs))


# every released model: alpha 0.9, has_msa (0, 0, 1, 1), local_ws (0, 0, 2, 1), the constructor defaults
_S = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_M = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)


@register_model
def litv2_s(pretrained: bool = False, **kwargs: Any) -> LITv2:
    return _create_litv2("litv2_s", pretrained, _S, **kwargs)


@register_model
def litv2_m(pretrained: bool = False, **kwargs: Any) -> LITv2:
    return _create_litv2("litv2_m", pretrained, _M, **kwargs)


@register_model
def litv2_b(pretrained: bool = False, **kwargs: Any) -> LITv2:
    return _create_litv2("litv2_b", pretrained, _B, **kwargs)


@register_model
def litv2_b_384(pretrained: bool = False, **kwargs: Any) -> LITv2:
    return _create_litv2("litv2_b_384", pretrained, _B, **kwargs)
