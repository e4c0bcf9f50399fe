"""FasterViT (Hatamizadeh et al., ICLR 2024): conv stages, then Hierarchical Attention (HAT) stages.

Read top to bottom: the conv block, stem and downsampler, the two stage kinds, the model, checkpoint conversion,
pretrained configs, and one registered function per variant. The HAT block itself is `fastvits.layers.hat`.

Written from the paper and the published architecture facts; parameter names follow the official checkpoints so
they load directly. Every model is dynamic: one instance runs any H x W >= 32. Transformer stages pad their map at
the bottom/right to window multiples, and the carrier-token grid, its pooling and every position encoding are
derived from the actual input. On inputs the official code accepts with a square window grid, the outputs equal the
official ones; on non-square window grids carrier tokens keep their true 2-D layout (the official code scrambles
them, see docs/fastervit.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d
from timm.models import generate_default_cfgs, register_model

from ..checkpoint import CheckpointError, register_checkpoint_filter
from ..layers import CarrierTokenInit, hat_blocks, hierarchical_attention
from ..layers.inference_form import InferenceForm
from ._common import Stage, StagedModel, base_cfg, build_model, init_linear, stage_drop_path_rates

__all__ = ["ConvBlock", "Downsample", "FasterViT", "IMAGENET_TOP1", "Stem", "official_state_dict"]


# -------------------------------------------------------------------------------------------------- blocks
class ConvBlock(nn.Module):
    """Residual block: 3x3 conv, BN, GELU, 3x3 conv, BN, optional layer scale."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)


class Stem(InferenceForm, nn.Module):
    """Two 3x3 stride-2 convs with BN (eps 1e-4) and ReLU: output stride 4."""

    def __init__(self, in_chans: int, in_dim: int, dim: int) -> None:
        super().__init__()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


class Downsample(nn.Module):
    """LayerNorm2d then a 3x3 stride-2 conv doubling the channels (sits at the end of a stage)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


# -------------------------------------------------------------------------------------------------- stages
class ConvStage(Stage):
    """Conv blocks at one resolution (one per drop-path rate), then the downsampler."""

    def __init__(self, dim: int, drop_path: Sequence[float], layer_scale_conv: float | None, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ConvBlock(dim, rate, layer_scale_conv) for rate in drop_path])
        self.downsample = Downsample(dim) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = self.call_block(blk, x)
        return x


class HATStage(Stage):
    """Transformer stage: HAT blocks over windows with carrier tokens (`hierarchical_attention`), then the
    downsampler. One block per drop-path rate; without carrier tokens (`hat=False`) the blocks are plain
    window-attention blocks."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        ct_size: int,
        drop_path: Sequence[float],
        downsample: bool,
        *,
        hat: bool,
        do_propagation: bool,
        **block_args: Any,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.blocks = hat_blocks(
            dim, num_heads, window_size, drop_path, do_propagation, ct_size=ct_size, carrier_tokens=hat, **block_args
        )
        self.global_tokenizer = CarrierTokenInit(dim, ct_size) if hat else None
        self.downsample = Downsample(dim) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W) with channels-last strides."""
        return hierarchical_attention(x, self.blocks, self.global_tokenizer, self.window_size, self.grad_checkpointing)


# --------------------------------------------------------------------------------------------------- model
class FasterViT(StagedModel):
    """FasterViT classifier and multi-scale backbone.

    The keywords are the official constructor's, so a config written for the official code builds the same model.

    Args:
        dim: channels of the first stage; stage i has dim * 2**i.
        in_dim: channels of the stem's first conv.
        depths: blocks per stage (stages 0-1 convolutional, 2-3 HAT).
        window_size: window side per stage (only stages 2-3 use them), or one side for all.
        ct_size: carrier tokens per window side.
        mlp_ratio: hidden width of the transformer MLPs relative to the stage width.
        num_heads: attention heads per stage (only stages 2-3 use them).
        resolution: accepted for the official keyword and without effect: every fastvits model runs any input size.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        qkv_bias: biases on the query/key/value projections.
        qk_scale: attention scale, default head_dim ** -0.5.
        drop_rate: dropout after the transformer MLPs' activation and output, and after the attention projection.
        attn_drop_rate: dropout of the attention probabilities.
        layer_scale: initial value of the transformer layer scales, or None for none.
        layer_scale_conv: initial value of the conv-block layer scales, or None for none.
        layer_norm_last: LayerNorm2d as the final norm instead of BatchNorm2d.
        hat: per stage, whether carrier tokens are used (they are skipped at run time when a map fits in a single
            window).
        do_propagation: propagate carrier tokens back into the windows at the end of a HAT stage.
        global_pool: 'avg' or '' (no pooling in forward_head).
        fused_attn: `F.scaled_dot_product_attention` instead of the official matmul-softmax order (saves memory in
            GPU training; `fastvits.optimize_for_inference` turns it on where it is faster).
    """

    stage_attr = "levels"

    def __init__(
        self,
        dim: int = 64,
        in_dim: int = 64,
        depths: Sequence[int] = (2, 3, 6, 5),
        window_size: int | Sequence[int] = (7, 7, 7, 7),
        ct_size: int = 2,
        mlp_ratio: float = 4.0,
        num_heads: Sequence[int] = (2, 4, 8, 16),
        resolution: int | Sequence[int] | None = None,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        layer_scale: float | None = None,
        layer_scale_conv: float | None = None,
        layer_norm_last: bool = False,
        hat: Sequence[bool] = (False, False, True, False),
        do_propagation: bool = False,
        global_pool: str = "avg",
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        window_size = (window_size,) * 4 if isinstance(window_size, int) else tuple(window_size)
        if not len(depths) == len(num_heads) == len(window_size) == len(hat) == 4:
            raise ValueError("depths, num_heads, window_size and hat need one entry per stage (4 stages)")
        self._init_classifier(in_chans, num_classes, global_pool, int(dim * 2 ** (len(depths) - 1)))
        self.patch_embed = Stem(in_chans, in_dim, dim)
        block_args = dict(
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
            attn_drop=attn_drop_rate, layer_scale=layer_scale, fused_attn=fused_attn,
        )
        levels: list[Stage] = []
        for i, rates in enumerate(stage_drop_path_rates(drop_path_rate, depths)):
            stage_dim = int(dim * 2**i)
            downsample = i < len(depths) - 1
            if i < 2:
                levels.append(ConvStage(stage_dim, rates, layer_scale_conv, downsample))
            else:
                levels.append(
                    HATStage(
                        stage_dim, num_heads[i], window_size[i], ct_size, rates, downsample,
                        hat=hat[i], do_propagation=do_propagation, **block_args,
                    )
                )
            self.feature_info.append(dict(num_chs=stage_dim, reduction=2 ** (i + 2), module=f"levels.{i}"))
        self.levels = nn.ModuleList(levels)
        self._build_head(LayerNorm2d(self.num_features) if layer_norm_last else nn.BatchNorm2d(self.num_features))
        self.apply(init_linear)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if n.split(".")[-1].startswith("gamma")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        fine = [(r"^levels\.(\d+)\.blocks\.(\d+)", None), (r"^levels\.(\d+)", (0,))]
        return dict(stem=r"^patch_embed", blocks=r"^levels\.(\d+)" if coarse else fine)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.head(x)


# ------------------------------------------------------------------------------------------- checkpoints
DERIVED_BUFFERS = ("relative_bias", "relative_coords_table", "relative_position_index")
"""Buffers the official model derives itself (coordinate tables, index, deploy-mode bias cache): never stored here."""
_TOKENIZER_ALIAS = "global_tokenizer.to_global_feature.pos."  # the official second name of the tokenizer's conv
_TOKENIZER = "global_tokenizer.pos_embed."


@register_checkpoint_filter(FasterViT)
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official FasterViT layout -> fastvits layout.

    Drops the position-bias caches and coordinate tables (recomputed from the MLPs: never stored), folds the
    tokenizer's duplicated conv keys into one after checking they agree, and renames the attention bias MLP
    (`pos_emb_funct` -> `rel_pos`). fastvits checkpoints pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.rsplit(".", 1)[-1] in DERIVED_BUFFERS:
            continue
        if _TOKENIZER_ALIAS in k:
            main = k.replace(_TOKENIZER_ALIAS, _TOKENIZER)
            if main in state_dict and not torch.equal(state_dict[main], v):
                raise CheckpointError(f"{k} and {main} should hold the same tensor but differ: the file is corrupt")
            k = main
        out[k.replace(".pos_emb_funct.", ".rel_pos.")] = v
    return out


def official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fastvits FasterViT weights in the official key layout: the reverse of `checkpoint_filter_fn`.

    `.rel_pos.` becomes `.pos_emb_funct.`, and the tokenizer's conv is also stored under its official alias. The
    official model derives the `DERIVED_BUFFERS` itself.
    """
    out = {}
    for k, v in state_dict.items():
        k = k.replace(".rel_pos.", ".pos_emb_funct.")
        out[k] = v
        if f".{_TOKENIZER}" in k:
            out[k.replace(_TOKENIZER, _TOKENIZER_ALIAS)] = v
    return out


# ---------------------------------------------------------------------------------------- pretrained cfgs
def _cfg(file: str, **kwargs: Any) -> dict[str, Any]:
    return base_cfg(
        **{
            "hf_hub_id": "ahatamiz/FasterViT",
            "hf_hub_filename": file,
            "crop_pct": 1.0,
            "first_conv": "patch_embed.conv_down.0",
            "license": "nvidia-source-code-license-nc",
            "paper_ids": "arXiv:2306.06189",
            "paper_name": "FasterViT: Fast Vision Transformers with Hierarchical Attention",
            "origin_url": "https://github.com/NVlabs/FasterViT",
            **kwargs,
        }
    )


# The official any-resolution models: the same architectures and checkpoints, configured for 576x960 inputs
# (541x960 for FasterViT-2, as upstream). Every fastvits model is dynamic; these names keep the official vocabulary.
_ANY_RES = dict(input_size=(3, 576, 960), pool_size=(18, 30))
_ANY_RES_2 = dict(input_size=(3, 541, 960), pool_size=(17, 30))
_21K_224 = dict(input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.95, crop_mode="squash")
_21K_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_mode="squash")
_21K_512 = dict(input_size=(3, 512, 512), pool_size=(16, 16), crop_mode="squash")
_21K_768 = dict(input_size=(3, 768, 768), pool_size=(24, 24), crop_pct=0.93, crop_mode="squash")

default_cfgs = generate_default_cfgs(
    {
        "fastervit_0_224.in1k": _cfg("fastervit_0_224_1k.pth.tar", crop_pct=0.875),
        "fastervit_1_224.in1k": _cfg("fastervit_1_224_1k.pth.tar"),
        "fastervit_2_224.in1k": _cfg("fastervit_2_224_1k.pth.tar"),
        "fastervit_3_224.in1k": _cfg("fastervit_3_224_1k.pth.tar"),
        "fastervit_4_224.in1k": _cfg("fastervit_4_224_1k.pth.tar"),
        "fastervit_5_224.in1k": _cfg("fastervit_5_224_1k.pth.tar"),
        "fastervit_6_224.in1k": _cfg("fastervit_6_224_1k.pth.tar"),
        "fastervit_4_21k_224.in21k_ft_in1k": _cfg("fastervit_4_21k_224_w14.pth.tar", **_21K_224),
        "fastervit_4_21k_384.in21k_ft_in1k": _cfg("fastervit_4_21k_384_w24.pth.tar", **_21K_384),
        "fastervit_4_21k_512.in21k_ft_in1k": _cfg("fastervit_4_21k_512_w32.pth.tar", **_21K_512),
        "fastervit_4_21k_768.in21k_ft_in1k": _cfg("fastervit_4_21k_768_w48.pth.tar", **_21K_768),
        "fastervit_0_any_res.in1k": _cfg("fastervit_0_224_1k.pth.tar", crop_pct=0.875, **_ANY_RES),
        "fastervit_1_any_res.in1k": _cfg("fastervit_1_224_1k.pth.tar", **_ANY_RES),
        "fastervit_2_any_res.in1k": _cfg("fastervit_2_224_1k.pth.tar", **_ANY_RES_2),
        "fastervit_3_any_res.in1k": _cfg("fastervit_3_224_1k.pth.tar", **_ANY_RES),
        "fastervit_4_any_res.in1k": _cfg("fastervit_4_224_1k.pth.tar", **_ANY_RES),
        "fastervit_5_any_res.in1k": _cfg("fastervit_5_224_1k.pth.tar", **_ANY_RES),
        "fastervit_6_any_res.in1k": _cfg("fastervit_6_224_1k.pth.tar", **_ANY_RES),
        "fastervit_4_21k_224_any_res.in21k_ft_in1k": _cfg(
            "fastervit_4_21k_224_w14.pth.tar", **{**_21K_224, **_ANY_RES}
        ),
        "fastervit_4_21k_384_any_res.in21k_ft_in1k": _cfg(
            "fastervit_4_21k_384_w24.pth.tar", **{**_21K_384, **_ANY_RES}
        ),
        "fastervit_4_21k_512_any_res.in21k_ft_in1k": _cfg(
            "fastervit_4_21k_512_w32.pth.tar", **{**_21K_512, **_ANY_RES}
        ),
        "fastervit_4_21k_768_any_res.in21k_ft_in1k": _cfg(
            "fastervit_4_21k_768_w48.pth.tar", **{**_21K_768, **_ANY_RES}
        ),
    }
)

IMAGENET_TOP1 = {  # official ImageNet-1K top-1 of the released weights (the any-res names share them)
    "fastervit_0_224": 82.1,
    "fastervit_1_224": 83.2,
    "fastervit_2_224": 84.2,
    "fastervit_3_224": 84.9,
    "fastervit_4_224": 85.4,
    "fastervit_5_224": 85.6,
    "fastervit_6_224": 85.8,
    "fastervit_4_21k_224": 86.6,
    "fastervit_4_21k_384": 87.6,
    "fastervit_4_21k_512": 87.8,
    "fastervit_4_21k_768": 87.9,
}


# -------------------------------------------------------------------------------------------------- variants
def _create_fastervit(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> FasterViT:
    return build_model(FasterViT, variant, pretrained, **dict(model_args, **kwargs))


_FV0 = dict(dim=64, in_dim=64, depths=(2, 3, 6, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
_FV1 = dict(dim=80, in_dim=32, depths=(1, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
_FV2 = dict(dim=96, in_dim=64, depths=(3, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
_LS = dict(layer_scale=1e-5, do_propagation=True)
_FV3 = dict(dim=128, in_dim=64, depths=(3, 3, 12, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.3, **_LS)
_FV4 = dict(dim=196, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3, **_LS)
_FV5 = dict(dim=320, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3, **_LS)
_FV6 = dict(dim=320, in_dim=64, depths=(3, 3, 16, 8), num_heads=(4, 8, 16, 32), drop_path_rate=0.5, **_LS)
# ImageNet-21K FasterViT-4: no carrier tokens; stage-3 windows cover the 16x map, stage-4 windows half the 32x map
_FV4_21K = dict(_FV4, hat=(False, False, False, False), drop_path_rate=0.42)


@register_model
def fastervit_0_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_0_224", pretrained, _FV0, **kwargs)


@register_model
def fastervit_1_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_1_224", pretrained, _FV1, **kwargs)


@register_model
def fastervit_2_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_2_224", pretrained, _FV2, **kwargs)


@register_model
def fastervit_3_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_3_224", pretrained, _FV3, **kwargs)


@register_model
def fastervit_4_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_4_224", pretrained, _FV4, **kwargs)


@register_model
def fastervit_5_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_5_224", pretrained, _FV5, **kwargs)


@register_model
def fastervit_6_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_6_224", pretrained, _FV6, **kwargs)


@register_model
def fastervit_4_21k_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_4_21k_224", pretrained, dict(_FV4_21K, window_size=(7, 7, 14, 7)), **kwargs)


@register_model
def fastervit_4_21k_384(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_4_21k_384", pretrained, dict(_FV4_21K, window_size=(7, 7, 24, 12)), **kwargs)


@register_model
def fastervit_4_21k_512(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_4_21k_512", pretrained, dict(_FV4_21K, window_size=(7, 7, 32, 16)), **kwargs)


@register_model
def fastervit_4_21k_768(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_4_21k_768", pretrained, dict(_FV4_21K, window_size=(7, 7, 48, 24)), **kwargs)


@register_model
def fastervit_0_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_0_any_res", pretrained, _FV0, **kwargs)


@register_model
def fastervit_1_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_1_any_res", pretrained, _FV1, **kwargs)


@register_model
def fastervit_2_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_2_any_res", pretrained, _FV2, **kwargs)


@register_model
def fastervit_3_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_3_any_res", pretrained, _FV3, **kwargs)


@register_model
def fastervit_4_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_4_any_res", pretrained, _FV4, **kwargs)


@register_model
def fastervit_5_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_5_any_res", pretrained, _FV5, **kwargs)


@register_model
def fastervit_6_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return _create_fastervit("fastervit_6_any_res", pretrained, _FV6, **kwargs)


# the official any-resolution 21K models train with drop_path_rate 0.3
@register_model
def fastervit_4_21k_224_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    args = dict(_FV4_21K, window_size=(7, 7, 14, 7), drop_path_rate=0.3)
    return _create_fastervit("fastervit_4_21k_224_any_res", pretrained, args, **kwargs)


@register_model
def fastervit_4_21k_384_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    args = dict(_FV4_21K, window_size=(7, 7, 24, 12), drop_path_rate=0.3)
    return _create_fastervit("fastervit_4_21k_384_any_res", pretrained, args, **kwargs)


@register_model
def fastervit_4_21k_512_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    args = dict(_FV4_21K, window_size=(7, 7, 32, 16), drop_path_rate=0.3)
    return _create_fastervit("fastervit_4_21k_512_any_res", pretrained, args, **kwargs)


@register_model
def fastervit_4_21k_768_any_res(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    args = dict(_FV4_21K, window_size=(7, 7, 48, 24), drop_path_rate=0.3)
    return _create_fastervit("fastervit_4_21k_768_any_res", pretrained, args, **kwargs)
