"""Training, evaluation and prediction on top of timm's components (`fastvits train|validate|predict`).

One concern per module: `recipe` (hyper-parameter presets as data), `data` and `fashion_mnist` (datasets and
transforms), `sampling` (reproducible order and augmentation), `distributed` (torchrun), `engine` (the
loops), `checkpoint` and `files` (atomic, verified state), `metrics` and `plots` (CSV/JSON/PNG), `options`
(a run's settings), `trainer` (assembly), `inference` (validate/predict) and `cli`.
"""

from .errors import CheckpointError, DataError, DivergenceError, TrainError
from .options import TrainOptions
from .recipe import PRESETS, Recipe
from .trainer import run_training

__all__ = ["PRESETS", "CheckpointError", "DataError", "DivergenceError", "Recipe", "TrainError", "TrainOptions",
           "run_training"]
