"""Gradient checkpointing of one block: the loop every stage and HAT layer runs its blocks through."""

from __future__ import annotations

from typing import Any

import torch
from timm.models import checkpoint
from torch import nn

__all__ = ["call_block"]


def call_block(block: nn.Module, *args: Any, checkpointing: bool) -> Any:
    """`block(*args)`; with `checkpointing` and autograd on, its activations are recomputed in the backward pass
    instead of being kept."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args)
    return block(*args)
