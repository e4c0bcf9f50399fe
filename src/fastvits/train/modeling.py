"""Building models by name, and the run description that lets `validate` and `predict` rebuild them.

Any timm model works, fastvits models included (importing `fastvits` registers them with timm, and
`resolve_name` maps the official aliases). Nothing here knows about a particular family: model-specific
settings travel as keyword arguments (`--model-kwargs '{"dim": 32}'`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.data import ImageNetInfo

from ..checkpoint import load_checkpoint
from ..errors import unexpected_keyword
from ..registry import resolve_name
from .errors import CheckpointError, TrainError

__all__ = ["RUN_FILE", "WEIGHTS", "ModelSpec", "build_model", "default_class_names", "load_run"]

RUN_FILE = "run.json"
WEIGHTS = {"model": "model.safetensors", "ema": "model_ema.safetensors"}


@dataclass
class ModelSpec:
    """What rebuilds a trained model and its pre-processing; stored under "model" in a run's run.json.

    Attributes:
        name: timm / fastvits model name.
        kwargs: extra constructor arguments (`--model-kwargs`).
        num_classes: classifier width.
        class_names: label names in index order.
        data_config: timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode).
    """

    name: str
    num_classes: int
    class_names: list[str]
    kwargs: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(name: str, num_classes: int | None = None, checkpoint: str | Path | None = None,
                pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create a model and optionally load weights into it.

    Args:
        name: timm or fastvits model name (official FasterViT aliases accepted).
        num_classes: classifier width; None keeps the model's default.
        checkpoint: weights file (official .pth/.pth.tar or safetensors). A classifier of another width is
            left freshly initialised, which is how fine-tuning to a new dataset starts.
        pretrained: download the model's default weights (needs the network).
        **kwargs: constructor arguments; None values are dropped by timm.

    Raises:
        TrainError: the name is unknown, or the constructor has no argument of a given name (a typo in
            --model-kwargs, or a setting of another model family); other errors of the constructor are bugs.
    """
    try:
        model = timm.create_model(resolve_name(name), pretrained=pretrained, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        raise TrainError(f"unknown model {name!r}: use a timm or fastvits name (timm.list_models() lists them)") from e
    except TypeError as e:
        unknown = unexpected_keyword(e)
        if unknown is None:
            raise
        raise TrainError(f"model {name} has no constructor argument {unknown!r} ({e}); remove it from "
                         "--model-kwargs or correct its name") from e
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet-1k names for 1000-way classifiers, else "class <i>"."""
    if num_classes == 1000:
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class {i}" for i in range(num_classes)]


def load_run(run_dir: Path, weights: str = "model") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model a training run exported, with its "model" or "ema" weights."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file():
        raise CheckpointError(f"{run_dir} is not a training run folder ({RUN_FILE} is missing); "
                              "pass the --output folder of `fastvits train`")
    spec = ModelSpec(**json.loads(run_file.read_text())["model"])
    path = Path(run_dir) / WEIGHTS[weights]
    if not path.is_file():
        hint = "the run has no EMA weights; drop --ema" if weights == "ema" else "the run has not finished an epoch"
        raise CheckpointError(f"{path} does not exist: {hint}")
    model = build_model(spec.name, num_classes=spec.num_classes, checkpoint=path, **spec.kwargs)
    return model, spec
