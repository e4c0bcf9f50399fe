"""torchvision detectors (Mask R-CNN, Faster R-CNN, RetinaNet, FCOS) on fastvits or timm backbones.

The detectors are torchvision's own; only the backbone is ours. They take a list of (3, H, W) images in
[0, 1] and normalise and resize them internally (`min_size`/`max_size`, 800x1333 by default), so any
image size goes straight in: the backbones pad internally to their window and patch multiples.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .backbone import STRIDES, BackboneConfig, BackboneWithFPN, build_backbone
from .errors import DownstreamSettingsError
from .segmentation import group_norm

ARCHS: tuple[str, ...] = ("maskrcnn", "fasterrcnn", "retinanet", "fcos")
TWO_STAGE: tuple[str, ...] = ("maskrcnn", "fasterrcnn")


@dataclass
class DetectorConfig:
    """A detector's head and input settings; saved with each run.

    Attributes:
        arch: One of `ARCHS`.
        num_classes: Number of classes including background (label 0), as torchvision counts them.
        fpn_channels: FPN width. The R-CNN box head (4x this) and mask head (this) scale with it, so the
            default 256 gives torchvision's standard heads and small values give fast test models. The FCOS
            head's GroupNorm keeps 32 groups from 128 channels and at least 4 channels per group below.
        min_size: Shorter image side after the detector's internal resize.
        max_size: Cap on the longer side.
        detector_kwargs: Passed on to the torchvision class (score thresholds, sampling sizes, ...).
    """

    arch: str = "maskrcnn"
    num_classes: int = 91
    fpn_channels: int = 256
    min_size: int = 800
    max_size: int = 1333
    detector_kwargs: dict[str, Any] = field(default_factory=dict)


def _fcos_head(channels: int, num_classes: int) -> FCOSHead:
    """torchvision's FCOS head with `group_norm` instead of its fixed GroupNorm(32, channels).

    At 256 channels the two are the same. Narrower FPNs would get one channel per group, which normalises each
    value of the 1x1 P7 map of a small image to 0 and fails at batch size 1 ("Expected more than 1 value per
    channel"). `FCOSHead` takes no norm layer, so its two branches are replaced by ones that do.
    """
    head = FCOSHead(channels, 1, num_classes)
    head.classification_head = FCOSClassificationHead(channels, 1, num_classes, norm_layer=group_norm)
    head.regression_head = FCOSRegressionHead(channels, 1, norm_layer=group_norm)
    return head


_CLASSES: dict[str, type[nn.Module]] = {
    "maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN, "retinanet": RetinaNet, "fcos": FCOS,
}
_SET_HERE = frozenset({"backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std", "head", "box_head",
                       "box_predictor", "mask_head", "mask_predictor"})


def _named_parameters(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}


def _check_detector_kwargs(cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
    """Refuse `detector_kwargs` that the torchvision class would ignore (its `**kwargs` go on to the input transform,
    whose own `**kwargs` swallow typos) or that `build_detector` sets itself."""
    accepted = _named_parameters(cls) | _named_parameters(GeneralizedRCNNTransform)
    unknown, ours = sorted(set(kwargs) - accepted), sorted(set(kwargs) & _SET_HERE)
    if unknown:
        raise DownstreamSettingsError(
            f"--detector-kwargs: {cls.__name__} has no setting {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(accepted - _SET_HERE))}"
        )
    if ours:
        raise DownstreamSettingsError(
            f"--detector-kwargs: {', '.join(ours)} are set from the other options (--min-size, --max-size, "
            "--fpn-channels, the backbone and the data); remove them from --detector-kwargs"
        )


def build_detector(cfg: DetectorConfig, backbone_cfg: BackboneConfig) -> nn.Module:
    """Builds a torchvision detector on a multi-scale backbone with an FPN.

    The R-CNNs use pyramid levels P2-P5 plus a max-pooled P6 (as torchvision's ResNet-50 FPN models do);
    RetinaNet and FCOS use P3-P5 plus P6/P7 computed from P5, as in their papers.

    Raises:
        DownstreamSettingsError: Unknown `arch`, or `detector_kwargs` the detector does not take.
    """
    if cfg.arch not in ARCHS:
        raise DownstreamSettingsError(f"unknown detector arch {cfg.arch!r}; choose one of {ARCHS}")
    _check_detector_kwargs(_CLASSES[cfg.arch], cfg.detector_kwargs)
    c = cfg.fpn_channels
    two_stage = cfg.arch in TWO_STAGE
    strides = STRIDES if two_stage else STRIDES[1:]
    body = build_backbone(backbone_cfg, strides)
    extra = LastLevelMaxPool() if two_stage else LastLevelP6P7(c, c)
    backbone = BackboneWithFPN(body, c, extra)
    common: dict[str, Any] = dict(
        min_size=cfg.min_size, max_size=cfg.max_size, image_mean=body.mean, image_std=body.std, **cfg.detector_kwargs
    )
    if cfg.arch == "retinanet":
        return RetinaNet(backbone, cfg.num_classes, **common)
    if cfg.arch == "fcos":
        return FCOS(backbone, cfg.num_classes, head=_fcos_head(c, cfg.num_classes), **common)
    # Heads sized from the FPN width; torchvision's defaults hard-code 256/1024 and would not match a narrow FPN.
    common.update(
        num_classes=None,
        box_head=TwoMLPHead(c * 7 * 7, 4 * c),  # 7x7 RoIAlign output
        box_predictor=FastRCNNPredictor(4 * c, cfg.num_classes),
    )
    if cfg.arch == "fasterrcnn":
        return FasterRCNN(backbone, **common)
    return MaskRCNN(
        backbone,
        mask_head=MaskRCNNHeads(c, (c,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(c, c, cfg.num_classes),
        **common,
    )
