"""Model families. Importing this package registers every fastvits model with timm."""

from .fastervit import FASTERVIT_VARIANTS, FasterViT
from .litv2 import LITV2_VARIANTS, LITv2

__all__ = ["FASTERVIT_VARIANTS", "LITV2_VARIANTS", "FasterViT", "LITv2"]
