"""Multi-scale backbones for torchvision detectors and the segmentation heads.

Any model that speaks timm's `features_only` protocol works here: FasterViT and LITv2 from fastvits, and
timm's own ResNet, ConvNeXt or Swin for comparison. The adapter reads everything it needs from
`feature_info` (channels, strides, stage module names), so no family needs special code.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
from timm.layers import Format, freeze_batch_norm_2d
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from ..checkpoint import load_checkpoint
from ..errors import unexpected_keyword
from ..registry import resolve_name
from .errors import DownstreamSettingsError, MissingFileError

# The four stages every hierarchical backbone has; "stage k" below always means the level at STRIDES[k].
STRIDES: tuple[int, ...] = (4, 8, 16, 32)


@dataclass
class BackboneConfig:
    """How to build a backbone; saved with each run so eval and predict rebuild the same network.

    Attributes:
        name: Model name, e.g. a FasterViT or LITv2 variant, or any timm model with `features_only`.
        pretrained: Load the model's default classification weights.
        checkpoint: Or load classification weights from this file (official or fastvits format).
        frozen_stages: -1 trains everything; 0 freezes the stem; k >= 1 freezes the stem and the first k stages.
        frozen_bn: Replace BatchNorm2d by FrozenBatchNorm2d, because detection batches of 1-2 images give
            batch statistics too noisy to learn from.
        kwargs: Extra model keyword arguments (a tiny test configuration, `img_size` for Swin, ...).
    """

    name: str
    pretrained: bool = False
    checkpoint: str | None = None
    frozen_stages: int = -1
    frozen_bn: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


def _load_classification_weights(features: nn.Module, name: str, checkpoint: str, **kwargs: Any) -> None:
    """Initialises a features model from a classification checkpoint, strictly.

    The checkpoint goes through `fastvits.load_checkpoint` on the matching classification model, which
    converts official key layouts and refuses checkpoints of another variant. Its tensors are then copied
    into the features model, whose wrapper renames modules: FeatureGetterNet nests them under `model.`,
    FeatureListNet flattens `stages.0` to `stages_0`. (timm's own `pretrained_cfg_overlay=dict(file=...)`
    is avoided: for features models it loads non-strictly and would silently keep random weights.)

    Raises:
        fastvits.CheckpointError: The checkpoint does not fit the model.
        RuntimeError: A features-model tensor has no counterpart in the classification model.
    """
    # num_classes=0: the backbone needs no classifier, so a headless checkpoint is as good as a full one
    classifier = load_checkpoint(timm.create_model(name, **{**kwargs, "num_classes": 0}), checkpoint).state_dict()
    state, unmatched = {}, []
    for key in features.state_dict():
        match = next((c for c in (key, key.removeprefix("model."), key.replace("_", ".", 1)) if c in classifier), None)
        if match is None:
            unmatched.append(key)
        else:
            state[key] = classifier[match]
    if unmatched:
        raise RuntimeError(
            f"{len(unmatched)} backbone tensors have no counterpart in {name}'s state dict: {unmatched[:5]}"
        )
    features.load_state_dict(state)


def _check_model_name(name: str) -> None:
    """Refuses names timm does not know, suggesting near ones (timm's own error names no alternatives).

    Names with a source prefix (`hf-hub:`, `local-dir:`) are left to timm, which resolves them.
    """
    if ":" in name or timm.is_model(name):
        return
    near = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    raise DownstreamSettingsError(
        f"unknown backbone {name!r}{hint}; pass a FasterViT or LITv2 name (fastvits.list_models()) or any timm "
        "model name (timm.list_models())"
    )


def create_feature_model(
    name: str, *, pretrained: bool = False, checkpoint: str | None = None, **kwargs: Any
) -> nn.Module:
    """Creates a `features_only` model, optionally initialised from a classification checkpoint file.

    Importing fastvits registers FasterViT and LITv2 with timm, so one factory serves them and timm's own
    families; official names (`faster_vit_0_224`) are mapped to ours first.

    Raises:
        DownstreamSettingsError: Unknown model name, or a keyword argument the model does not take.
        MissingFileError: `checkpoint` does not exist.
        fastvits.CheckpointError: The checkpoint does not fit the model.
    """
    name = resolve_name(name)
    _check_model_name(name)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise MissingFileError(f"backbone checkpoint {checkpoint} not found; pass an existing .pth/.safetensors file")
    try:
        features = timm.create_model(name, pretrained=pretrained and checkpoint is None, features_only=True, **kwargs)
    except TypeError as e:
        unknown = unexpected_keyword(e)
        if unknown is None:
            raise
        raise DownstreamSettingsError(
            f"backbone {name} has no constructor argument {unknown!r}; remove it from --backbone-kwargs or correct it"
        ) from e
    if checkpoint is not None:
        _load_classification_weights(features, name, checkpoint, **kwargs)
    return features


def _find_module(model: nn.Module, name: str) -> nn.Module:
    """Finds a stage by its `feature_info` name in whichever timm feature wrapper holds it.

    FeatureListNet flattens `stages.0` to `stages_0`; FeatureGetterNet nests the model under `model.`.
    """
    for candidate, module in model.named_modules():
        if candidate in (name, name.replace(".", "_")) or candidate.endswith("." + name):
            return module
    raise KeyError(f"stage module {name!r} from feature_info not found in {type(model).__name__}")


def freeze_stages(model: nn.Module, stage_modules: Sequence[str], frozen_stages: int) -> list[nn.Module]:
    """Stops gradients to the stem and the first `frozen_stages` stages.

    The stem has no entry in `feature_info`, so it is found by order: timm models register parameters in
    the order they run, hence everything registered before the first parameter of stage k belongs to the
    stem or to stages 0..k-1.

    Args:
        model: The features model.
        stage_modules: `feature_info` module names of the stages, in order.
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and the first k stages.

    Returns:
        The modules whose parameters are all frozen; they must stay in eval mode (dropout, drop-path, BN).
    """
    if not -1 <= frozen_stages <= len(stage_modules):
        raise DownstreamSettingsError(
            f"frozen_stages={frozen_stages} must be in [-1, {len(stage_modules)}]: -1 none, 0 the stem, k the stem "
            "and the first k stages"
        )
    if frozen_stages < 0:
        return []
    params = list(model.parameters())
    if frozen_stages < len(stage_modules):
        first = next(_find_module(model, stage_modules[frozen_stages]).parameters())
        params = params[: next(i for i, p in enumerate(params) if p is first)]
    frozen_ids = {id(p) for p in params}
    for p in params:
        p.requires_grad_(False)
    return [
        m
        for m in model.modules()
        if any(True for _ in m.parameters()) and all(id(p) in frozen_ids for p in m.parameters())
    ]


class FeatureBackbone(nn.Module):
    """A `features_only` model reduced to the pyramid levels a head asks for, as NCHW maps.

    Args:
        model: A timm-protocol features model.
        strides: Output strides to return, each one of the model's `feature_info.reduction()`.
        frozen_stages: See `freeze_stages`.
        frozen_bn: Convert BatchNorm layers to frozen ones (timm's converter, which also handles BatchNormAct).
    """

    def __init__(
        self,
        model: nn.Module,
        strides: Sequence[int] = STRIDES,
        frozen_stages: int = -1,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        reductions = model.feature_info.reduction()
        missing = [s for s in (*STRIDES, *strides) if s not in reductions]
        if missing:
            raise DownstreamSettingsError(
                f"{type(model).__name__} gives features at strides {reductions}, not {missing}; "
                "create it with out_indices covering strides 4, 8, 16 and 32"
            )
        self.indices = [reductions.index(s) for s in strides]
        self.strides = tuple(strides)
        self.channels = [model.feature_info.channels()[i] for i in self.indices]
        self.nhwc = getattr(model, "output_fmt", Format.NCHW) == Format.NHWC  # Swin returns channels-last maps
        data_cfg = timm.data.resolve_model_data_config(model)
        self.mean, self.std = list(data_cfg["mean"]), list(data_cfg["std"])
        self.body = freeze_batch_norm_2d(model) if frozen_bn else model
        stage_names = [model.feature_info.module_name()[reductions.index(s)] for s in STRIDES]
        self._frozen = freeze_stages(self.body, stage_names, frozen_stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x)
        out = [features[i] for i in self.indices]
        if self.nhwc:
            out = [f.permute(0, 3, 1, 2) for f in out]  # (B, H, W, C) -> (B, C, H, W)
        return out

    def train(self, mode: bool = True) -> FeatureBackbone:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self


def build_backbone(cfg: BackboneConfig, strides: Sequence[int] = STRIDES) -> FeatureBackbone:
    """Creates the model described by `cfg` and wraps it as a `FeatureBackbone` at `strides`."""
    model = create_feature_model(cfg.name, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, **cfg.kwargs)
    return FeatureBackbone(model, strides, frozen_stages=cfg.frozen_stages, frozen_bn=cfg.frozen_bn)


class BackboneWithFPN(nn.Module):
    """Backbone + torchvision FPN with the `out_channels` attribute torchvision's detectors read.

    Args:
        backbone: Multi-scale feature extractor.
        out_channels: FPN width.
        extra_blocks: Extra coarser levels: `LastLevelMaxPool` for the R-CNNs, `LastLevelP6P7` for
            RetinaNet and FCOS.
    """

    def __init__(self, backbone: FeatureBackbone, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None):
        super().__init__()
        self.backbone = backbone
        self.fpn = FeaturePyramidNetwork(backbone.channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        # Keys "0", "1", ... are what torchvision's MultiScaleRoIAlign expects by default.
        features = OrderedDict((str(i), f) for i, f in enumerate(self.backbone(x)))
        return self.fpn(features)
