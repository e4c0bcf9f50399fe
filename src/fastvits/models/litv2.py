"""LITv2 (Pan et al., NeurIPS 2022, "Fast Vision Transformers with HiLo Attention").

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
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import checkpoint, generate_default_cfgs
from torch.utils import flop_counter
from torchvision.ops import deform_conv2d

from ..checkpoint import register_checkpoint_filter
from ..fuse import fold_bn_into_weights
from ..layers import HiLo, pad_nchw
from ..layers.deform import deform_conv2d_sampled
from ..layers.fused import Conv2d, Linear, fusable
from ._common import StagedModel, autocast_enabled, base_cfg, init_linear, register_variants, stage_drop_path_rates

__all__ = ["LITV2_VARIANTS", "ConvFFN", "DeformConv2dPack", "DeformableTokenMerging", "LITv2"]



def _deform_conv2d_flops(
    input_shape: Sequence[int], weight_shape: Sequence[int], *args: Any, out_shape: Sequence[int], **kwargs: Any
) -> int:
    """FLOPs (2 per multiply-accumulate) of the deformable conv's GEMM, counted like a regular conv.

    Registered with `torch.utils.flop_counter` so that FLOP/MAC counts (`fastvits bench`, timm-style
    GMACs) include the token merging; the bilinear sampling is not counted, as in the official count.
    """
    out_chans, in_per_group, kh, kw = weight_shape
    return 2 * out_shape[0] * out_shape[2] * out_shape[3] * out_chans * in_per_group * kh * kw


def _register_deform_conv2d_flops() -> None:
    try:
        op = torch.ops.torchvision.deform_conv2d
    except (AttributeError, RuntimeError):  # torchvision built without its C++ ops: nothing to count
        return
    if op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(_deform_conv2d_flops)


_register_deform_conv2d_flops()


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) row-major tokens (a view when the map has channels-last strides)."""
    return x.flatten(2).transpose(1, 2)


def _map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) (a view of contiguous tokens, with channels-last strides)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)


class PatchEmbed(nn.Module):
    """Non-overlapping 4x4 patches (the image is zero-padded to a multiple of 4), then LayerNorm."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(pad_nchw(x, (self.patch_size, self.patch_size)))  # (B, C, H/4, W/4)
        _, _, H, W = x.shape
        return _map(self.norm(_tokens(x)), H, W)


class ConvFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv on the map -> GELU -> fc2 (official `DWMlp`); no activation before the conv.

    At inference on a CPU (`fastvits.layers.fused`) the depthwise conv and GELU run as one oneDNN kernel on the
    channels-last map with a packed copy of the conv weight, the linears on packed weights for few rows, and the
    residual add (if given) inside fc2.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.dwconv = Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H*W, C) tokens -> fc2(...) + residual (B, H*W, C)."""
        h = _map(self.fc1(x), H, W)  # (B, hidden, H, W); channels-last strides, as the official code
        if fusable(self, x):
            h = _tokens(self.dwconv(h, act="gelu"))  # conv + GELU in one kernel; (B, N, hidden)
        else:  # GELU on the tokens, the official op order (over the map, vectorisation rounds a few values apart)
            h = self.act(_tokens(self.dwconv(h)))  # (B, N, hidden)
        if not self.training:  # dropouts are identities: the residual add runs inside fc2
            return self.fc2(h, residual=residual)
        h = self.drop(self.fc2(self.drop(h)))  # (B, N, C)
        return h if residual is None else h + residual


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
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if window_size > 0:
            self.norm1 = nn.LayerNorm(dim, eps=1e-5)
            self.attn = HiLo(
                dim, num_heads, window_size=window_size, alpha=alpha, qkv_bias=qkv_bias, channels_last=True
            )
        else:
            self.norm1 = self.attn = None
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x: (B, H*W, C) tokens."""
        if self.attn is not None:
            B, N, C = x.shape
            y = self.attn(self.norm1(x).view(B, H, W, C))  # tokens as a (B, H, W, C) map, HiLo's native layout
            x = x + self.drop_path(y.reshape(B, N, C))
        if not self.training:  # the residual add runs inside the MLP's last linear
            return self.mlp(self.norm2(x), H, W, residual=x)
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class DeformConv2dPack(nn.Module):
    """Deformable convolution (v1) whose offsets are predicted from its own input by a regular conv.

    `weight`, `bias` and `conv_offset` are laid out as in the official `DeformConv2dPack`; offsets have
    2 channels per kernel tap (row-major taps), y (row) first, then x. `conv_offset` starts at zero, so
    an untrained layer is an ordinary convolution.
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
        s, p = self.stride, self.padding
        if fusable(self, x):  # CPU inference: one weighted gather + one GEMM, 1.1-4.3x faster than torchvision here
            return deform_conv2d_sampled(x, offset, self.weight, self.bias, s, p)
        kind = x.device.type
        if autocast_enabled(kind) or x.dtype in (torch.float16, torch.bfloat16):
            # torchvision's CPU kernel has no bf16 path (and half precision gains nothing in this small layer): run
            # float32 and hand back the input's dtype, as torchvision's own CUDA autocast wrapper does
            weight, bias = self.weight.float(), self.bias.float()
            with torch.autocast(kind, enabled=False):
                out = deform_conv2d(x.float(), offset.float(), weight, bias, stride=(s, s), padding=(p, p))
            return out.to(x.dtype)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=(s, s), padding=(p, p))


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

    def fuse(self) -> DeformableTokenMerging:
        """Fold the BatchNorm into the deformable conv's weight and bias (eval only; see `fastvits.fuse`).

        The sampling offsets come from the input alone, and the deformable conv is linear in its weight, so
        the per-channel affine BatchNorm moves into it exactly.
        """
        self.dconv.weight, self.dconv.bias = fold_bn_into_weights(self.dconv.weight, self.dconv.bias, self.norm)
        self.norm = nn.Identity()
        return self


class LITStage(nn.Module):
    """Blocks at one resolution, then DTM (all stages but the last)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        alpha: float,
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        drop_path: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                LITBlock(dim, num_heads, window_size, alpha, mlp_ratio, qkv_bias, proj_drop, drop_path[i])
                for i in range(depth)
            ]
        )
        self.downsample = DeformableTokenMerging(dim, 2 * dim) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, downsample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) -> (stage output before DTM, after DTM), NCHW."""
        _, _, H, W = x.shape
        x = _tokens(x)  # (B, N, C)
        for blk in self.blocks:
            x = checkpoint(blk, x, H, W) if self.grad_checkpointing and torch.is_grad_enabled() else blk(x, H, W)
        x = _map(x, H, W)  # (B, C, H, W)
        return x, (self.downsample(x) if downsample and self.downsample is not None else x)


class LITv2(StagedModel):
    """LITv2 classifier and multi-scale backbone (any input size >= 32).

    Args:
        embed_dim: channels of the first stage; stage i has embed_dim * 2**i.
        depths: blocks per stage.
        num_heads: attention heads per stage (used where window_size > 0).
        window_size: HiLo window per stage; 0 = no attention (ConvFFN-only blocks), 1 = plain global
            attention. The official models use (0, 0, 2, 1).
        alpha: fraction of Lo-Fi heads in HiLo (truncated: int(num_heads * alpha)).
        mlp_ratio: ConvFFN hidden width relative to the stage width.
        qkv_bias: biases on the HiLo query/key/value projections.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        proj_drop_rate: dropout inside the ConvFFN (the official `drop_rate`).
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg' or '' (no pooling in forward_head).
        drop_rate: dropout before the classifier (the official model has none).
        patch_size: side of the non-overlapping patches of the stem.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Sequence[int] = (0, 0, 2, 1),
        alpha: float = 0.9,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        if not len(depths) == len(num_heads) == len(window_size) == 4:
            raise ValueError("depths, num_heads and window_size need one entry per stage (4 stages)")
        self._init_classifier(in_chans, num_classes, global_pool, drop_rate, int(embed_dim * 2 ** (len(depths) - 1)))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        layers = []
        for i, (depth, rates) in enumerate(zip(depths, stage_drop_path_rates(drop_path_rate, depths))):
            dim = int(embed_dim * 2**i)
            layers.append(
                LITStage(
                    dim,
                    depth,
                    num_heads[i],
                    window_size[i],
                    alpha,
                    mlp_ratio,
                    qkv_bias,
                    proj_drop_rate,
                    rates,
                    downsample=i < len(depths) - 1,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * 2**i, module=f"layers.{i}"))
        self.layers = nn.ModuleList(layers)
        self._build_head(nn.LayerNorm(self.num_features, eps=1e-5))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The official scheme: truncated-normal linears, fan-out normal depthwise convs; others keep their own."""
        init_linear(m)
        if isinstance(m, ConvFFN):
            fan_out = m.dwconv.kernel_size[0] * m.dwconv.kernel_size[1] * m.dwconv.out_channels // m.dwconv.groups
            nn.init.normal_(m.dwconv.weight, 0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(m.dwconv.bias)

    stage_attr = "layers"

    # ----------------------------------------------------------------------------------- timm protocol
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

    # ----------------------------------------------------------------------------------------- forward
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm over channels of a (B, C, H, W) map; returns a (B, C, H, W) view of the normed tokens."""
        _, _, H, W = x.shape
        return _map(self.norm(_tokens(x)), H, W)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool1d(x.flatten(2), 1).flatten(1)  # token mean, (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


# --------------------------------------------------------------------------------------------- checkpoints
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


# ---------------------------------------------------------------------------------------------- variants
_URL = "https://github.com/ziplab/LITv2/releases/download/v1.0/"


def _cfg(file: str, **kwargs: Any) -> dict[str, Any]:
    return base_cfg(
        _URL + file,
        **{
            "crop_pct": 0.875,  # resize the short side to 256, centre crop 224
            "first_conv": "patch_embed.proj",
            "license": "apache-2.0",
            "paper_ids": "arXiv:2205.13213",
            "paper_name": "Fast Vision Transformers with HiLo Attention",
            "origin_url": "https://github.com/ziplab/LITv2",
            **kwargs,
        },
    )


_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)

# name -> (architecture arguments, official ImageNet-1K top-1, pretrained cfg). All use alpha 0.9 and
# window sizes (0, 0, 2, 1), the constructor defaults.
LITV2_VARIANTS: dict[str, tuple[dict[str, Any], float, dict[str, Any]]] = {
    "litv2_s": (
        dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
        82.0,
        _cfg("litv2_s.pth"),
    ),
    "litv2_m": (
        dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
        83.3,
        _cfg("litv2_m.pth"),
    ),
    "litv2_b": (_B, 83.6, _cfg("litv2_b.pth")),
    # fine-tuned at 384 and evaluated with a direct resize to 384x384 (no crop)
    "litv2_b_384": (
        _B,
        84.7,
        _cfg("litv2_b_384.pth", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode="squash"),
    ),
}

default_cfgs = generate_default_cfgs({f"{name}.in1k": cfg for name, (_, _, cfg) in LITV2_VARIANTS.items()})


register_variants(LITv2, LITV2_VARIANTS)
