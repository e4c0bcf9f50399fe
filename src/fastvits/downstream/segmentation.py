"""Semantic segmentation: Semantic FPN (the head LITv2 reports) and UPerNet on the same backbones.

Both heads take the backbone's four maps at strides 4-32, predict at stride 4, and the `Segmenter`
upsamples the logits to the input size. Heads normalise with GroupNorm rather than BatchNorm: segmentation
batches on small machines are 2-8 crops, and the 1x1 pooled maps of UPerNet's pyramid pooling have no
spatial extent to compute batch statistics over.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from .backbone import BackboneConfig, FeatureBackbone, build_backbone
from .errors import DownstreamSettingsError

HEADS: tuple[str, ...] = ("semfpn", "upernet")
IGNORE_INDEX = 255


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where there are 128+ channels, fewer so that each group keeps at least 4 channels.

    With one channel per group (GroupNorm(32, 32)) a group of a 1x1 map is a single value, which GroupNorm
    normalises to 0 and refuses outright at batch size 1; narrow heads and the coarsest pyramid levels of small
    images meet exactly that. Used by the segmentation heads and the FCOS head.
    """
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv + GroupNorm + ReLU, the unit both heads are made of."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        group_norm(out_channels),
        nn.ReLU(inplace=True),
    )


class SemanticFPNHead(nn.Module):
    """Semantic FPN (Kirillov et al., Panoptic FPN): an FPN, then each level upsampled to stride 4 and summed.

    Level i (stride 4 * 2^i) goes through i conv + 2x-upsample steps (level 0 through one conv), so every
    level reaches stride 4 with the same number of channels before the sum and the 1x1 classifier.

    Args:
        in_channels: Backbone channels per level, finest first.
        num_classes: Output classes, background included.
        channels: FPN width; the per-level branches use half of it, as in the paper.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        branch = channels // 2
        self.branches = nn.ModuleList(
            nn.ModuleList(conv_norm_act(channels if step == 0 else branch, branch) for step in range(max(level, 1)))
            for level in range(len(in_channels))
        )
        self.classifier = nn.Conv2d(branch, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pyramid = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        out = None
        for level, (x, convs) in enumerate(zip(pyramid, self.branches)):
            for step, conv in enumerate(convs):
                x = conv(x)
                if level > 0:  # next finer level's size, so odd input sizes line up exactly
                    x = F.interpolate(
                        x, size=pyramid[level - step - 1].shape[-2:], mode="bilinear", align_corners=False
                    )
            out = x if out is None else out + x
        return self.classifier(out)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: context pooled at several grid sizes, upsampled and concatenated."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_norm_act(in_channels, channels, 1)) for s in pool_scales
        )
        self.bottleneck = conv_norm_act(in_channels + len(pool_scales) * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetHead(nn.Module):
    """UPerNet (Xiao et al.): pyramid pooling on the coarsest map, a top-down FPN, and a fusion of all levels.

    Args:
        in_channels: Backbone channels per level, finest first.
        num_classes: Output classes, background included.
        channels: Width of every head layer (the mmseg ADE20K configs use 512).
        pool_scales: Grid sizes of the pyramid pooling module.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.laterals = nn.ModuleList(conv_norm_act(c, channels, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(conv_norm_act(channels, channels) for _ in in_channels[:-1])
        self.merge = conv_norm_act(len(in_channels) * channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = self.ppm(features[-1])
        outs = [top]
        for lateral, smooth, f in zip(reversed(self.laterals), reversed(self.smooth), reversed(features[:-1])):
            top = lateral(f) + F.interpolate(top, size=f.shape[-2:], mode="bilinear", align_corners=False)
            outs.insert(0, smooth(top))
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.merge(torch.cat(outs, dim=1)))


@dataclass
class SegmenterConfig:
    """A segmentation model's head settings; saved with each run.

    Attributes:
        head: One of `HEADS`.
        num_classes: Classes including background (mask value 0).
        channels: Head width (FPN width for Semantic FPN, all layers for UPerNet).
    """

    head: str = "semfpn"
    num_classes: int = 2
    channels: int = 256


class Segmenter(nn.Module):
    """Backbone + head; takes images in [0, 1] like the torchvision detectors and returns full-size logits.

    Args:
        backbone: Four-level feature extractor.
        head: Maps the features to stride-4 logits.
    """

    def __init__(self, backbone: FeatureBackbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, num_classes, H, W) logits."""
        logits = self.head(self.backbone((images - self.mean) / self.std))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(cfg: SegmenterConfig, backbone_cfg: BackboneConfig) -> Segmenter:
    """Builds a `Segmenter` from its configs.

    Raises:
        DownstreamSettingsError: Unknown `head`.
    """
    if cfg.head not in HEADS:
        raise DownstreamSettingsError(f"unknown segmentation head {cfg.head!r}; choose one of {HEADS}")
    backbone = build_backbone(backbone_cfg)
    head_cls = SemanticFPNHead if cfg.head == "semfpn" else UPerNetHead
    return Segmenter(backbone, head_cls(backbone.channels, cfg.num_classes, cfg.channels))
