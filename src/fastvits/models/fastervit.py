"""FasterViT (Hatamizadeh et al., ICLR 2024): conv stages, then Hierarchical Attention (HAT) stages.

Written from the paper and the published architecture facts; parameter names follow the official
checkpoints so they load directly (see `fastvits.checkpoint`). Every model is dynamic: one instance
runs any H x W >= 32. Transformer stages pad their map at the bottom/right to window multiples, and
the carrier-token grid, its pooling and every position encoding are derived from the actual input.
On inputs the official code accepts with a square window grid, the outputs equal the official ones;
on non-square window grids carrier tokens keep their true 2-D layout (the official code scrambles
them, see docs/fastervit.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d
from timm.models import checkpoint, generate_default_cfgs

from ..checkpoint import CheckpointError, register_checkpoint_filter
from ..fuse import folded_conv
from ..layers import HAT2d
from ..layers.cache import CachedByInput
from ..layers.fused import Conv2d, conv2d_fused, fusable, pack_conv_weight
from ._common import StagedModel, base_cfg, init_linear, register_variants, stage_drop_path_rates

__all__ = ["FasterViT"]


class ConvBlock(CachedByInput):
    """Residual block: 3x3 conv, BN, GELU, 3x3 conv, BN, optional layer scale.

    At inference on a CPU (`fastvits.layers.fused`) it runs as two oneDNN convolutions on channels-last maps,
    with both BatchNorms and the layer scale folded into cached weights, GELU and the residual add fused.
    """

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
        if fusable(self, x):
            x = x.contiguous(memory_format=torch.channels_last)
            w1, b1, w2, b2 = self.cached_eager("packed", lambda: self._packed(x.shape))
            y = conv2d_fused(x, w1, b1, self.conv1, act="gelu")
            return conv2d_fused(y, w2, b2, self.conv2, residual=x)
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)

    def _folded(self) -> tuple[torch.Tensor, ...]:
        """(w1, b1, w2, b2): both convs with their BatchNorm, the second with the layer scale, folded in."""
        return (*folded_conv(self.conv1, self.norm1), *folded_conv(self.conv2, self.norm2, self.gamma))

    def _packed(self, input_size: Sequence[int]) -> tuple[torch.Tensor, ...]:
        w1, b1, w2, b2 = self._folded()
        return pack_conv_weight(w1, self.conv1, input_size), b1, pack_conv_weight(w2, self.conv2, input_size), b2

    def fuse(self) -> ConvBlock:
        """Fold both BatchNorms and the layer scale into the convs (eval only; see `fastvits.fuse`)."""
        w1, b1, w2, b2 = self._folded()
        self.conv1.weight, self.conv1.bias = nn.Parameter(w1), nn.Parameter(b1)
        self.conv2.weight, self.conv2.bias = nn.Parameter(w2), nn.Parameter(b2)
        self.norm1, self.norm2, self.gamma = nn.Identity(), nn.Identity(), None
        self.clear_cache()
        return self


class Downsample(nn.Module):
    """LayerNorm2d then a 3x3 stride-2 conv doubling the channels (sits at the end of a stage).

    At inference on a CPU the conv runs on channels-last maps with a packed copy of its weight (`fused.Conv2d`).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.reduction = nn.Sequential(Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class Stem(CachedByInput):
    """Two 3x3 stride-2 convs with BN (eps 1e-4) and ReLU: output stride 4.

    At inference on a CPU: two oneDNN convolutions with the BatchNorms folded, each ReLU in place, channels-last
    output (the rest of the network stays channels-last).
    """

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
        if fusable(self, x):
            x = x.contiguous(memory_format=torch.channels_last)
            for conv, weight, bias in self.cached_eager("packed", lambda: self._packed(x.shape)):
                x = conv2d_fused(x, weight, bias, conv, act="relu")
            return x
        return self.conv_down(x)

    def _folded(self) -> list[tuple[nn.Conv2d, torch.Tensor, torch.Tensor]]:
        """(conv, folded weight, folded bias) for both convs, whether or not `fuse()` already folded them."""
        pairs = zip(self.conv_down, list(self.conv_down)[1:])
        return [(conv, *folded_conv(conv, after)) for conv, after in pairs if isinstance(conv, nn.Conv2d)]

    def _packed(self, input_size: Sequence[int]) -> list[tuple[nn.Conv2d, torch.Tensor, torch.Tensor]]:
        """Folded weights in the layouts oneDNN picks for an input of `input_size` (B, C, H, W): packed without the
        size, FasterViT-2's second conv got a layout its batch-1 kernel reorders on every call (2x slower)."""
        packed, size = [], list(input_size)
        for conv, weight, bias in self._folded():
            packed.append((conv, pack_conv_weight(weight, conv, size), bias))
            B, _, H, W = size
            size = [B, conv.out_channels, (H - 1) // 2 + 1, (W - 1) // 2 + 1]  # 3x3, stride 2, padding 1
        return packed

    def fuse(self) -> Stem:
        """Fold the BatchNorms into the convs (eval only; see `fastvits.fuse`)."""
        for conv, weight, bias in self._folded():
            conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.conv_down = nn.Sequential(*(m for m in self.conv_down if not isinstance(m, nn.BatchNorm2d)))
        self.clear_cache()
        return self


class ConvStage(nn.Module):
    def __init__(
        self, dim: int, depth: int, drop_path: Sequence[float], layer_scale_conv: float | None, downsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ConvBlock(dim, drop_path[i], layer_scale_conv) for i in range(depth)])
        self.downsample = Downsample(dim) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, downsample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (stage output before the downsample, after it)."""
        for blk in self.blocks:
            x = checkpoint(blk, x) if self.grad_checkpointing and torch.is_grad_enabled() else blk(x)
        return x, (self.downsample(x) if downsample and self.downsample is not None else x)


class HATStage(HAT2d):
    """Transformer stage: `HAT2d` (padding, carrier tokens, HAT blocks, propagation), then the downsample."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        ct_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        layer_scale: float | None,
        hat: bool,
        do_propagation: bool,
        downsample: bool,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            window_size=window_size,
            ct_size=ct_size,
            depth=depth,
            mlp_ratio=mlp_ratio,
            drop_path=drop_path,
            layer_scale=layer_scale,
            carrier_tokens=hat,
            propagate=do_propagation,
            pos_embed=True,
        )
        self.downsample = Downsample(dim) if downsample else None

    def forward(self, x: torch.Tensor, downsample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """x: (B, C, H, W) -> (stage output before the downsample, after it)."""
        x = self.forward_map(x)
        return x, (self.downsample(x) if downsample and self.downsample is not None else x)


class FasterViT(StagedModel):
    """FasterViT classifier and multi-scale backbone.

    Args:
        dim: channels of the first stage; stage i has dim * 2**i.
        in_dim: channels of the stem's first conv.
        depths: blocks per stage (stages 0-1 convolutional, 2-3 HAT).
        num_heads: attention heads per stage (only stages 2-3 use them).
        window_size: window side per stage (only stages 2-3 use them), or one side for all.
        ct_size: carrier tokens per window side.
        mlp_ratio: hidden width of the transformer MLPs relative to the stage width.
        hat: per stage, whether carrier tokens are used (they are skipped at run time when a map
            fits in a single window).
        layer_scale: initial value of the transformer layer scales, or None for none.
        layer_scale_conv: initial value of the conv-block layer scales, or None for none.
        do_propagation: propagate carrier tokens back into the windows at the end of a HAT stage.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg' or '' (no pooling in forward_head).
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        dim: int = 64,
        in_dim: int = 64,
        depths: Sequence[int] = (2, 3, 6, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        window_size: int | Sequence[int] = (7, 7, 7, 7),
        ct_size: int = 2,
        mlp_ratio: float = 4.0,
        hat: Sequence[bool] = (False, False, True, False),
        layer_scale: float | None = None,
        layer_scale_conv: float | None = None,
        do_propagation: bool = False,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        window_size = (window_size,) * 4 if isinstance(window_size, int) else window_size
        if not len(depths) == len(num_heads) == len(window_size) == len(hat) == 4:
            raise ValueError("depths, num_heads, window_size and hat need one entry per stage (4 stages)")
        self._init_classifier(in_chans, num_classes, global_pool, drop_rate, int(dim * 2 ** (len(depths) - 1)))
        self.patch_embed = Stem(in_chans, in_dim, dim)
        levels = []
        for i, (depth, rates) in enumerate(zip(depths, stage_drop_path_rates(drop_path_rate, depths))):
            stage_dim = int(dim * 2**i)
            last = i == len(depths) - 1
            if i < 2:
                levels.append(ConvStage(stage_dim, depth, rates, layer_scale_conv, downsample=not last))
            else:
                levels.append(
                    HATStage(
                        stage_dim,
                        depth,
                        num_heads[i],
                        window_size[i],
                        ct_size,
                        mlp_ratio,
                        rates,
                        layer_scale,
                        hat=hat[i],
                        do_propagation=do_propagation,
                        downsample=not last,
                    )
                )
            self.feature_info.append(dict(num_chs=stage_dim, reduction=2 ** (i + 2), module=f"levels.{i}"))
        self.levels = nn.ModuleList(levels)
        self._build_head(nn.BatchNorm2d(self.num_features))
        self.apply(init_linear)

    stage_attr = "levels"

    # ----------------------------------------------------------------------------------- timm protocol
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if n.split(".")[-1].startswith("gamma")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        fine = [(r"^levels\.(\d+)\.blocks\.(\d+)", None), (r"^levels\.(\d+)", (0,))]
        return dict(stem=r"^patch_embed", blocks=r"^levels\.(\d+)" if coarse else fine)

    # ----------------------------------------------------------------------------------------- forward
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


# --------------------------------------------------------------------------------------------- checkpoints
_DERIVED_BUFFERS = ("relative_bias", "relative_coords_table", "relative_position_index")
_TOKENIZER_ALIAS = "global_tokenizer.to_global_feature.pos."


@register_checkpoint_filter(FasterViT)
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official FasterViT layout -> fastvits layout.

    Drops the position-bias caches and coordinate tables (recomputed from the MLPs: never stored),
    folds the tokenizer's duplicated conv keys into one after checking they agree, and renames the
    attention bias MLP (`pos_emb_funct` -> `rel_pos`). fastvits checkpoints pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.rsplit(".", 1)[-1] in _DERIVED_BUFFERS:
            continue
        if _TOKENIZER_ALIAS in k:
            main = k.replace(_TOKENIZER_ALIAS, "global_tokenizer.pos_embed.")
            if main in state_dict and not torch.equal(state_dict[main], v):
                raise CheckpointError(f"{k} and {main} should hold the same tensor but differ: the file is corrupt")
            k = main
        out[k.replace(".pos_emb_funct.", ".rel_pos.")] = v
    return out


# ---------------------------------------------------------------------------------------------- variants
_URL = "https://huggingface.co/ahatamiz/FasterViT/resolve/main/"


def _cfg(file: str, **kwargs: Any) -> dict[str, Any]:
    return base_cfg(
        _URL + file,
        **{
            "crop_pct": 1.0,
            "first_conv": "patch_embed.conv_down.0",
            "license": "nvidia-source-code-license-nc",
            "paper_ids": "arXiv:2306.06189",
            "paper_name": "FasterViT: Fast Vision Transformers with Hierarchical Attention",
            "origin_url": "https://github.com/NVlabs/FasterViT",
            **kwargs,
        },
    )


_LS = dict(layer_scale=1e-5, do_propagation=True)
_FV4 = dict(dim=196, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), **_LS)

# name -> (architecture arguments, official ImageNet-1K top-1, pretrained cfg)
FASTERVIT_VARIANTS: dict[str, tuple[dict[str, Any], float, dict[str, Any]]] = {
    "fastervit_0_224": (
        dict(dim=64, in_dim=64, depths=(2, 3, 6, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
        82.1,
        _cfg("fastervit_0_224_1k.pth.tar", crop_pct=0.875),
    ),
    "fastervit_1_224": (
        dict(dim=80, in_dim=32, depths=(1, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
        83.2,
        _cfg("fastervit_1_224_1k.pth.tar"),
    ),
    "fastervit_2_224": (
        dict(dim=96, in_dim=64, depths=(3, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
        84.2,
        _cfg("fastervit_2_224_1k.pth.tar"),
    ),
    "fastervit_3_224": (
        dict(dim=128, in_dim=64, depths=(3, 3, 12, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.3, **_LS),
        84.9,
        _cfg("fastervit_3_224_1k.pth.tar"),
    ),
    "fastervit_4_224": (dict(_FV4, drop_path_rate=0.3), 85.4, _cfg("fastervit_4_224_1k.pth.tar")),
    "fastervit_5_224": (
        dict(dim=320, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3, **_LS),
        85.6,
        _cfg("fastervit_5_224_1k.pth.tar"),
    ),
    "fastervit_6_224": (
        dict(dim=320, in_dim=64, depths=(3, 3, 16, 8), num_heads=(4, 8, 16, 32), drop_path_rate=0.5, **_LS),
        85.8,
        _cfg("fastervit_6_224_1k.pth.tar"),
    ),
}
for _res, _top1, _crop in ((224, 86.6, 0.95), (384, 87.6, 1.0), (512, 87.8, 1.0), (768, 87.9, 0.93)):
    _w = _res // 16
    FASTERVIT_VARIANTS[f"fastervit_4_21k_{_res}"] = (
        dict(_FV4, window_size=(7, 7, _w, _w // 2), hat=(False,) * 4, drop_path_rate=0.42),
        _top1,
        _cfg(
            f"fastervit_4_21k_{_res}_w{_w}.pth.tar",
            input_size=(3, _res, _res),
            pool_size=(_res // 32, _res // 32),
            crop_pct=_crop,
            crop_mode="squash",
        ),
    )
# Any-resolution names: the same architectures and checkpoints, configured for 576x960 inputs (541x960 for
# FasterViT-2, as upstream). Every fastvits model is dynamic; these names keep the official vocabulary.
for _name in list(FASTERVIT_VARIANTS):
    _args, _top1, _c = FASTERVIT_VARIANTS[_name]
    _h = 541 if _name.startswith("fastervit_2_") else 576
    _anyres_args = dict(_args, drop_path_rate=0.3) if "_21k_" in _name else _args
    _anyres_name = f"{_name}_any_res" if "_21k_" in _name else f"{_name.removesuffix('_224')}_any_res"
    FASTERVIT_VARIANTS[_anyres_name] = (
        _anyres_args, _top1, dict(_c, input_size=(3, _h, 960), pool_size=(-(-_h // 32), 30), test_input_size=None)
    )

default_cfgs = generate_default_cfgs({f"{name}.in1k": cfg for name, (_, _, cfg) in FASTERVIT_VARIANTS.items()})


register_variants(FasterViT, FASTERVIT_VARIANTS)
