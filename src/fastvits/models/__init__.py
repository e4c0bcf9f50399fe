"""Model families. Importing this package registers every fastvits model with timm."""

from .fastervit import FasterViT
from .litv2 import LITv2

__all__ = ["FasterViT", "LITv2"]
