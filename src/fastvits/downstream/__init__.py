"""Detection and semantic segmentation on fastvits (or any timm) backbones, built on torchvision.

The models need only torchvision. The data modules (`annotations`: COCO files and masks; `formats`: the two
on-disk formats; `datasets`: torch datasets; `synthetic`: the shapes and coins datasets) and the training and
evaluation loops (`engine`) need the `detection` extra: `pip install "fastvits[detection]"`.
"""

from .backbone import STRIDES, BackboneConfig, BackboneWithFPN, FeatureBackbone, build_backbone, freeze_stages
from .detection import ARCHS, DetectorConfig, build_detector
from .segmentation import HEADS, Segmenter, SegmenterConfig, SemanticFPNHead, UPerNetHead, build_segmenter

__all__ = [
    "ARCHS",
    "HEADS",
    "STRIDES",
    "BackboneConfig",
    "BackboneWithFPN",
    "DetectorConfig",
    "FeatureBackbone",
    "Segmenter",
    "SegmenterConfig",
    "SemanticFPNHead",
    "UPerNetHead",
    "build_backbone",
    "build_detector",
    "build_segmenter",
    "freeze_stages",
]
