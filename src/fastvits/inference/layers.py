"""Inference forms of the shared layers: linears and MLPs on oneDNN, frozen position encodings, HAT blocks with
their layer scales folded."""

from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import nn

from ..layers import ContinuousRelativeBias, HATBlock, MlpPositionEmbedding
from .engine import InferenceOptions, convert_children, converts
from .fold import fold_scale
from .onednn import PackedLinear
from .position import FrozenPositionEmbedding, FrozenRelativeBias

__all__ = ["PackedMlp"]


@converts(nn.Linear)
def _linear(linear: nn.Linear, options: InferenceOptions) -> nn.Module:
    return PackedLinear(linear) if options.cpu_kernels else linear


class PackedMlp(nn.Module):
    """timm's `Mlp` (fc1, exact GELU, fc2) at inference: fc1 and GELU one oneDNN kernel."""

    def __init__(self, mlp: Mlp) -> None:
        super().__init__()
        self.fc1 = PackedLinear(mlp.fc1, act="gelu")
        self.fc2 = PackedLinear(mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def _plain_gelu_mlp(mlp: Mlp) -> bool:
    """fc1 -> exact GELU -> fc2, nothing else that computes at inference (no norm, no gating)."""
    act_ok = type(mlp.act) is nn.GELU and mlp.act.approximate == "none"
    return act_ok and isinstance(mlp.norm, nn.Identity) and isinstance(mlp.fc1, nn.Linear)


@converts(Mlp)
def _mlp(mlp: Mlp, options: InferenceOptions) -> nn.Module:
    if options.cpu_kernels and _plain_gelu_mlp(mlp):
        return PackedMlp(mlp)
    return convert_children(mlp, options)


@converts(ContinuousRelativeBias, FrozenRelativeBias)
def _relative_bias(bias: ContinuousRelativeBias | FrozenRelativeBias, options: InferenceOptions) -> nn.Module:
    """A table over the plain bias MLP (of a model optimized before: a new table over its source)."""
    source = bias.source if isinstance(bias, FrozenRelativeBias) else bias
    return FrozenRelativeBias(source, options.max_sizes)


@converts(MlpPositionEmbedding, FrozenPositionEmbedding)
def _position_embedding(
    embedding: MlpPositionEmbedding | FrozenPositionEmbedding, options: InferenceOptions
) -> nn.Module:
    source = embedding.source if isinstance(embedding, FrozenPositionEmbedding) else embedding
    return FrozenPositionEmbedding(source, options.max_sizes)


@converts(HATBlock)
def _hat_block(block: HATBlock, options: InferenceOptions) -> nn.Module:
    """Each layer scale folded into the output projection of its branch (gamma1 stays when propagation uses it)."""
    scales = [("gamma3", block.attn.proj), ("gamma4", block.mlp and block.mlp.fc2)]
    if block.carrier_tokens:
        scales.append(("gamma2", block.hat_mlp and block.hat_mlp.fc2))
        if not block.propagate:
            scales.append(("gamma1", block.hat_attn.proj))
    for name, layer in scales:
        gamma = getattr(block, name, None)
        if gamma is not None and layer is not None:
            fold_scale(layer, gamma.detach())
            setattr(block, name, None)
    return convert_children(block, options)
