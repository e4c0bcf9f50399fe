"""Torch datasets over annotated images: detection targets for torchvision's detectors, and (image, mask) pairs
for segmentation, with their training augmentation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .formats import AnnotatedImages
from .segmentation import IGNORE_INDEX


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255)


class DetectionDataset(Dataset):
    """Images and torchvision detection targets.

    Args:
        source: Annotated images.
        train: Drop crowd and zero-size boxes (torchvision rejects both in training) and flip at random.
    """

    def __init__(self, source: AnnotatedImages, train: bool = False) -> None:
        self.source, self.train = source, train

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = to_tensor(self.source.load_image(index))
        ann = self.source.load_annotations(index)
        boxes = torch.from_numpy(ann.boxes)
        target = dict(boxes=boxes, labels=torch.from_numpy(ann.labels), iscrowd=torch.from_numpy(ann.iscrowd))
        if ann.masks is not None:
            target["masks"] = torch.from_numpy(ann.masks)
        if self.train:
            keep = ~target["iscrowd"] & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            target = {k: v[keep] for k, v in target.items()}
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
                w = image.shape[-1]
                target["boxes"] = torch.stack(
                    [
                        w - target["boxes"][:, 2],
                        target["boxes"][:, 1],
                        w - target["boxes"][:, 0],
                        target["boxes"][:, 3],
                    ],
                    dim=1,
                )
                if "masks" in target:
                    target["masks"] = target["masks"].flip(-1)
        target["image_id"] = torch.tensor(self.source.image_id(index))
        return image, target


def detection_collate(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Keeps images and targets as lists: torchvision detectors batch images of different sizes themselves."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def resize_short_side(x: torch.Tensor, short: float, mode: str) -> torch.Tensor:
    """Resizes a (C, H, W) tensor so that min(H, W) == short."""
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    size = (max(round(h * scale), 1), max(round(w * scale), 1))
    kwargs = dict(align_corners=False, antialias=True) if mode == "bilinear" else {}
    return F.interpolate(x[None], size=size, mode=mode, **kwargs)[0]


class SegmentationDataset(Dataset):
    """Images and class-id masks.

    Training samples are rescaled so the shorter side is `size` times a random factor in `scale_range`, cut to a
    random `crop` x `crop` window (padded with ignore where the image is smaller) and flipped at random.
    Evaluation samples keep the original mask; only the image is rescaled (shorter side `size`), and the
    evaluator resizes the logits back, so scores are measured at the annotation's resolution.

    Args:
        source: Annotated images.
        size: Shorter image side fed to the network.
        crop: Training crop size.
        train: Augment as above.
        scale_range: Random rescaling range in training; (0.5, 2.0) is the usual ADE20K setting.
    """

    def __init__(
        self,
        source: AnnotatedImages,
        size: int,
        crop: int = 512,
        train: bool = False,
        scale_range: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        self.source, self.size, self.crop, self.train, self.scale_range = source, size, crop, train, scale_range

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = to_tensor(self.source.load_image(index))
        mask = torch.from_numpy(self.source.load_semantic(index).astype(np.int64))
        if not self.train:
            return resize_short_side(image, self.size, "bilinear"), mask
        short = self.size * float(torch.empty(()).uniform_(*self.scale_range))
        image = resize_short_side(image, short, "bilinear")
        mask = resize_short_side(mask[None].float(), short, "nearest")[0].long()
        h, w = mask.shape
        ph, pw = max(self.crop - h, 0), max(self.crop - w, 0)
        image = F.pad(image, (0, pw, 0, ph))
        mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
        top = int(torch.randint(0, h + ph - self.crop + 1, ()))
        left = int(torch.randint(0, w + pw - self.crop + 1, ()))
        image = image[:, top : top + self.crop, left : left + self.crop]
        mask = mask[top : top + self.crop, left : left + self.crop]
        if torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask
