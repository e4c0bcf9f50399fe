"""What every fastvits model family shares: input validation, stages, the timm protocol, pretrained weights."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices

from ..checkpoint import CheckpointError, convert_state_dict, load_checkpoint
from ..layers import call_block
from ..layers.inference_form import InferenceForm

__all__ = [
    "MIN_INPUT_SIZE",
    "Stage",
    "StagedModel",
    "autocast_enabled",
    "base_cfg",
    "build_model",
    "check_image_input",
    "init_linear",
    "stage_drop_path_rates",
]

# every model pads internally; below 32 pixels the last stage would be empty
MIN_INPUT_SIZE = 32


def check_image_input(
    x: torch.Tensor, in_chans: int, min_size: int, model_name: str, weight_dtype: torch.dtype | None = None
) -> None:
    """Raise a ValueError naming the problem and the fix for anything but a (B, in_chans, H, W) float image batch
    (of `weight_dtype`, the model's, if given, unless autocast is on)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model_name} expects a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise ValueError(
            f"{model_name} expects a 4-D image batch (B, {in_chans}, H, W), got shape {tuple(x.shape)}.{hint}"
        )
    if x.shape[1] != in_chans:
        hint = " The input looks channels-last: use x.permute(0, 3, 1, 2)." if x.shape[-1] == in_chans else ""
        raise ValueError(
            f"{model_name} was built for {in_chans} input channels but got {x.shape[1]} (shape {tuple(x.shape)}).{hint}"
            f" Convert the images, or build the model with in_chans={x.shape[1]}."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{model_name} expects a floating-point image tensor, got {x.dtype}. Convert and normalise it first, "
            "e.g. x.float() / 255 followed by the model's mean/std normalisation."
        )
    if autocast_enabled(x.device.type) and x.dtype == torch.float64:
        raise TypeError(
            f"{model_name} got a float64 input under autocast, which runs its ops in lower precision and float64 "
            "nowhere: convert the input with x.float() (or run float64 without autocast)."
        )
    if weight_dtype is not None and x.dtype != weight_dtype and not autocast_enabled(x.device.type):
        raise TypeError(
            f"{model_name} has {weight_dtype} weights but got a {x.dtype} input. Convert one to the other "
            f"(x.to({weight_dtype}) or model.to({x.dtype})), or run under torch.autocast for mixed precision."
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{model_name} needs images of at least {min_size}x{min_size} pixels, got {x.shape[2]}x{x.shape[3]}. "
            f"Resize or pad the input to at least {min_size} pixels per side."
        )


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type` (False for devices without autocast)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def init_linear(m: nn.Module) -> None:
    """The official initialisation of both families' linear layers (truncated normal, zero bias), for `Module.apply`."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def stage_drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to `drop_path_rate` over all blocks, split into one list per stage."""
    # on the CPU explicitly, so that models can also be built under a meta default device
    rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    return [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(len(depths))]


# ------------------------------------------------------------------------------------------------ stages
class Stage(InferenceForm, nn.Module):
    """Blocks at one resolution (`forward_blocks`), then an optional downsampler (`downsample`, None for none).

    `forward(x, downsample)` returns (output before the downsampler, output after it): the stage output is what a
    detector takes as the feature map of this stride, the downsampled one feeds the next stage.
    """

    downsample: nn.Module | None

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    def call_block(self, block: nn.Module, *args: Any) -> Any:
        """`block(*args)`, recomputed in the backward pass when gradient checkpointing is on."""
        return call_block(block, *args, checkpointing=self.grad_checkpointing)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, downsample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.forward_blocks(x)
        return x, (self.downsample(x) if downsample and self.downsample is not None else x)


# ---------------------------------------------------------------------------------------- timm protocol
def _check_global_pool(global_pool: str, num_classes: int) -> None:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ValueError(
            f"global_pool='' (no pooling) needs num_classes=0: the classifier ({num_classes} classes) takes pooled "
            "features. Pass num_classes=0 for the unpooled feature map, or keep global_pool='avg'."
        )


class StagedModel(nn.Module):
    """The timm model protocol shared by the four-stage families.

    Subclasses call `_init_classifier` first, then build `patch_embed` and a ModuleList of `Stage`s under the
    attribute named by `stage_attr` (`levels` or `layers`, as in the official checkpoints), then `_build_head`;
    they provide `final_norm` and `forward_head`.
    """

    stage_attr = "stages"

    def _init_classifier(self, in_chans: int, num_classes: int, global_pool: str, num_features: int) -> None:
        """The attributes of timm's model protocol, set before the network is built."""
        _check_global_pool(global_pool, num_classes)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = num_features
        self.grad_checkpointing = False
        self.feature_info: list[dict[str, Any]] = []

    def _build_head(self, norm: nn.Module) -> None:
        """The final norm and the classifier, after the stages."""
        self.norm = norm
        self.reset_classifier(self.num_classes)

    @property
    def stages(self) -> nn.ModuleList:
        return getattr(self, self.stage_attr)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        weight = next(self.parameters(), None)
        dtype = None if weight is None else weight.dtype
        check_image_input(x, self.in_chans, MIN_INPUT_SIZE, type(self).__name__, dtype)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        pool = self.global_pool if global_pool is None else global_pool
        _check_global_pool(pool, num_classes)
        self.global_pool, self.num_classes = pool, num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def load_pretrained(self, path: str) -> None:
        """timm's `custom_load` hook: official or fastvits weights through `fastvits.load_checkpoint`."""
        load_checkpoint(self, path)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs before each downsampler (strides 4, 8, 16, 32), plus the final features.

        `norm=True` applies the final norm to the last stage's intermediate.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__} intermediates are NCHW only")
        self.check_input(x)
        stages = self.stages
        take, max_index = feature_take_indices(len(stages), indices)
        run = stages[: max_index + 1] if stop_early and not torch.jit.is_scripting() else stages
        full = len(run) == len(stages)
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(run):
            feat, x = stage(x, downsample=full or i < len(run) - 1)
            if i in take:
                intermediates.append(self.final_norm(feat) if norm and i == len(stages) - 1 else feat)
        if intermediates_only:
            return intermediates
        return (self.final_norm(x) if full else x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.stages), indices)
        setattr(self, self.stage_attr, self.stages[: max_index + 1])
        self.stages[-1].downsample = None  # its output would never be used
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)[1]
        return self.final_norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------- pretrained weights
def base_cfg(**kwargs: Any) -> dict[str, Any]:
    """Pretrained-cfg fields shared by every fastvits model.

    Weights come from the Hugging Face Hub (`hf_hub_id` and `hf_hub_filename`, through huggingface_hub: its cache,
    `HF_HUB_OFFLINE`, resumable downloads), a `url`, or a local `file` (`pretrained_cfg_overlay=dict(file=...)`), and
    load through `fastvits.load_checkpoint` (timm's `custom_load` hook), which converts official layouts, keeps a
    classifier that fits and says so when it resets one.
    """
    return {
        "custom_load": "hf",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (7, 7),
        "fixed_input_size": False,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": "head",
        **kwargs,
    }


def _weights_source(variant: str, overlay: dict[str, Any] | None) -> str:
    """Where pretrained weights for `variant` come from, in words (for error messages)."""
    cfg = {**timm.models.get_pretrained_cfg(variant).to_dict(), **(overlay or {})}
    if cfg.get("file"):
        return f"the file {cfg['file']}"
    if cfg.get("hf_hub_id"):
        return f"{cfg.get('hf_hub_filename', 'the weights')} from the Hugging Face Hub repository {cfg['hf_hub_id']}"
    return f"{cfg.get('url')}"


def build_model(model_cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm's `build_model_with_cfg` for a fastvits variant, with four feature maps for `features_only`.

    Weights from any source timm resolves load through `fastvits.load_checkpoint` (see `base_cfg`): a local file
    given as `pretrained_cfg_overlay=dict(file=...)` too, where timm would otherwise read it itself and drop a
    classifier whose width differs from the pretrained cfg's, silently, even one that fits the model. A download that
    fails (no network, `HF_HUB_OFFLINE=1` without a cached copy) is a `CheckpointError` naming the file and how to
    load a local copy.
    """
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and overlay.get("file"):
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    try:
        return build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            # timm adapts the input conv to `in_chans` itself, after this filter
            pretrained_filter_fn=partial(convert_state_dict, adapt_input_conv=False),
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
            **kwargs,
        )
    except OSError as e:
        if not pretrained:
            raise
        source = _weights_source(variant, kwargs.get("pretrained_cfg_overlay"))
        raise CheckpointError(
            f"{variant}: could not fetch or read the pretrained weights, {source} ({type(e).__name__}: {e}). "
            f"Without a network, download the file elsewhere, then load the local copy with "
            f"create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file='PATH')) or "
            f"fastvits.load_checkpoint(model, 'PATH')."
        ) from e
