"""fastvits: throughput-first hybrid vision transformers (FasterViT, LITv2) for PyTorch and timm.

`import fastvits` registers the models with timm, so `timm.create_model("fastervit_0_224")` works too.
"""

from . import layers, models
from .checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_safetensors
from .inference import optimize_for_inference
from .registry import create_model, list_models, resolve_name

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "create_model",
    "layers",
    "list_models",
    "load_checkpoint",
    "models",
    "optimize_for_inference",
    "read_state_dict",
    "resolve_name",
    "save_safetensors",
]
