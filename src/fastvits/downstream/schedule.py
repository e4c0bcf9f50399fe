"""Optimisation settings and the learning-rate schedule, kept free of the `detection` extra's imports.

The command line reads `TrainConfig`'s fields to build its options, and must load without pycocotools,
torchmetrics or scikit-image installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Optimisation settings; saved with each run.

    Attributes:
        epochs: Passes over the training set.
        max_steps: Stop after this many steps (quick checks); None runs all epochs.
        batch_size: Images per step.
        lr: Peak AdamW learning rate, reached after `warmup_steps` and decayed to 0 by a cosine.
        weight_decay: AdamW decay, not applied to norms, biases and other 1-D parameters.
        warmup_steps: Linear warm-up, capped at a tenth of the run so short runs still spend most steps at the peak.
        clip_grad: Gradient-norm clip; detection losses spike early in training.
        workers: DataLoader worker processes.
        seed: Seeds model init, augmentation and data order.
    """

    epochs: int = 12
    max_steps: int | None = None
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200
    clip_grad: float | None = 5.0
    workers: int = 0
    seed: int = 0


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
