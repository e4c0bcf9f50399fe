"""Calibration images for post-training int8 quantization: a fixed, reproducible set of preprocessed images.

A calibration source (`--calibration DATA`) is one of
- `fashion-mnist` or `fashion-mnist:FOLDER`: a split of Fashion-MNIST (`train` by default: calibrate on training
  images, evaluate on the test split);
- a folder of images, searched recursively in sorted path order: a flat folder, an ImageFolder split
  (`ROOT/train`) or anything else holding image files.

`num_images` images are taken evenly spaced over the source in its fixed order (index `i * len // num_images`), so
the same source gives the same images, in the same order, on every machine: no random sampling, nothing seeded.
They go through the model's evaluation transform (`fastvits.train.data.eval_transform`), the one `fastvits
validate` uses, so the activation ranges seen in calibration are the ones met in deployment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import UserError
from ..train.data import FASHION_MNIST, eval_transform, load_image, parse_data
from ..train.fashion_mnist import FashionMNIST

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "MIN_CALIBRATION_IMAGES", "CalibrationError", "CalibrationSet",
           "images_sha256", "load_calibration"]

DEFAULT_CALIBRATION_IMAGES = 128
MIN_CALIBRATION_IMAGES = 16  # fewer gives activation ranges that a single odd image decides


class CalibrationError(UserError, ValueError):
    """The calibration data is missing, too small, or unreadable; the message names the fix."""


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images and where they came from.

    Attributes:
        images: (N, C, H, W) float32, normalised as the model expects.
        source: the `--calibration` value.
        split: the Fashion-MNIST split (None for a folder).
        available: how many images the source holds.
    """

    images: torch.Tensor
    source: str
    split: str | None
    available: int

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the preprocessed images: equal fingerprints, equal calibration."""
        return images_sha256(self.images)

    def batches(self, batch_size: int = 1) -> Iterator[torch.Tensor]:
        """The images in their fixed order, `batch_size` at a time (the last batch may be smaller)."""
        yield from self.images.split(batch_size)

    def describe(self) -> dict[str, Any]:
        """What an artifact's metadata records about its calibration."""
        return {
            "source": self.source, "split": self.split, "count": len(self), "available": self.available,
            "selection": "evenly spaced in the source's fixed order", "input_size": list(self.images.shape[1:]),
            "sha256": self.fingerprint,
        }


def images_sha256(images: torch.Tensor) -> str:
    """SHA-256 of a float32 image batch's bytes (in C order)."""
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())


def _evenly_spaced(available: int, wanted: int) -> list[int]:
    return [i * available // wanted for i in range(wanted)]


def _picks(available: int, wanted: int, between: int | None) -> list[int]:
    """Evenly spaced indices; with `between`, midway between the picks of `between` evenly spaced images."""
    if between is None:
        return _evenly_spaced(available, wanted)
    half = available // between // 2
    if half == 0:
        raise CalibrationError(
            f"the source holds {available} images: too few to hold out check images next to {between} calibration "
            f"images (it needs at least {2 * between}); pass fewer --calibration-images or a larger set"
        )
    return [i * available // between + half for i in _evenly_spaced(between, wanted)]


def load_calibration(
    source: str,
    data_config: dict[str, Any],
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    split: str = "train",
    between: int | None = None,
) -> CalibrationSet:
    """`num_images` images of `source`, through the evaluation transform of `data_config` (timm's data config).

    `between=N` takes instead images midway between the picks of an N-image calibration set of the same source
    (disjoint from it; `num_images` <= N): the held-out images of a drift check.

    Raises CalibrationError when the source does not exist, holds no images, or holds fewer than `num_images`, and
    when `num_images` is under `MIN_CALIBRATION_IMAGES`.
    """
    if num_images < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f"{num_images} calibration images are too few: int8 ranges need at least {MIN_CALIBRATION_IMAGES} "
            f"(default {DEFAULT_CALIBRATION_IMAGES}); pass more with --calibration-images"
        )
    transform = eval_transform(data_config)
    data = parse_data(source)
    if data.kind == FASHION_MNIST:
        dataset = FashionMNIST(split, root=data.root)
        available, where, used_split = len(dataset), f"{FASHION_MNIST} {split}", split
        read = lambda i: dataset[i][0]  # noqa: E731
    else:
        folder = data.root
        if not folder.is_dir():
            raise CalibrationError(
                f"calibration data {source!r} is neither a folder nor {FASHION_MNIST}[:FOLDER]; pass a folder of "
                "images (e.g. the train split of an ImageFolder dataset) with --calibration"
            )
        files = _image_files(folder)
        if not files:
            raise CalibrationError(
                f"no calibration images in {folder} (searched recursively for {', '.join(IMG_EXTENSIONS)}); "
                "point --calibration at a folder of training images"
            )
        available, where, used_split = len(files), str(folder), None
        read = lambda i: load_image(str(files[i]))  # noqa: E731
    _check_count(available, num_images, where)
    images = [transform(read(i)) for i in _picks(available, num_images, between)]
    return CalibrationSet(torch.stack(images), source, used_split, available)


def _check_count(available: int, wanted: int, where: str) -> None:
    if available < wanted:
        fewer = f"pass --calibration-images {available}" if available >= MIN_CALIBRATION_IMAGES else (
            f"add images (at least {MIN_CALIBRATION_IMAGES})")
        raise CalibrationError(
            f"{where} holds {available} images but {wanted} calibration images were asked for: {fewer}, or point "
            "--calibration at a larger set"
        )
