"""`TrainOptions`: everything a training run takes besides its recipe, as one dataclass (`fastvits train`'s flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recipe import Recipe

__all__ = ["TrainOptions"]


@dataclass
class TrainOptions:
    """Everything `fastvits train` takes besides the recipe; see `fastvits train --help` for each."""

    model: str
    recipe: Recipe
    preset: str = "custom"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    pretrained: bool = False
    data: str = "fashion-mnist"
    train_split: str = "train"
    val_split: str = "val"
    train_samples: int | None = None
    val_samples: int | None = None
    img_size: tuple[int, int] | None = None
    check_data: bool = False
    lr: float | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    accum_steps: int = 1
    workers: int | None = None
    threads: int | None = None
    output: Path | None = None
    resume: str | None = None
    save_every: int = 0
    keep_checkpoints: int = 2
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    progress: bool = True
