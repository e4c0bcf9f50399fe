"""Model families. Importing this package registers every fastvits model with timm."""

from .fastervit import FASTERVIT_VARIANTS, FasterViT

__all__ = ["FASTERVIT_VARIANTS", "FasterViT"]
