"""Datasets, their checks, and timm transforms for training and evaluation.

`--data` names the source: `fashion-mnist` (the default, read offline from the Debian package),
`fashion-mnist:/folder`, or a folder in ImageFolder layout (`ROOT/<split>/<class>/<image>`). Problems a user
can fix (a missing dataset, an empty class folder, an image that does not decode) raise `DataError` naming
the file or folder and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .distributed import all_gather_objects
from .errors import DataError
from .fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from .fashion_mnist import FashionMNIST
from .recipe import Recipe

__all__ = [
    "DataSource", "check_classes", "check_images", "class_names", "eval_transform", "format_names", "load_image",
    "open_dataset", "parse_data", "resolve_input_config", "train_transform",
]

FASHION_MNIST = "fashion-mnist"


@dataclass(frozen=True)
class DataSource:
    """A parsed `--data` value.

    Attributes:
        kind: "fashion-mnist" or "folder".
        root: the folder (None: Fashion-MNIST's default location).
        splits: sub-folder (or Fashion-MNIST split) for the "train" and "val" roles.
    """

    kind: str
    root: Path | None
    splits: dict[str, str]

    @property
    def name(self) -> str:
        return FASHION_MNIST if self.kind == FASHION_MNIST else self.root.name


def parse_data(spec: str, train_split: str = "train", val_split: str = "val") -> DataSource:
    """Parse `--data`: "fashion-mnist", "fashion-mnist:/folder" or an ImageFolder root."""
    if spec == FASHION_MNIST or spec.startswith(FASHION_MNIST + ":"):
        root = spec.partition(":")[2] or None
        return DataSource(FASHION_MNIST, Path(root) if root else None, {"train": "train", "val": "test"})
    return DataSource("folder", Path(spec), {"train": train_split, "val": val_split})


def _split_dir(source: DataSource, role: str) -> Path:
    folder = source.root / source.splits[role]
    if not folder.is_dir():
        raise DataError(
            f"{folder} is not a folder. An ImageFolder dataset is laid out as ROOT/{source.splits['train']}"
            f"/<class>/<image> and ROOT/{source.splits['val']}/<class>/<image>; pass ROOT with --data, or "
            "name the sub-folders with --train-split/--val-split."
        )
    return folder


def class_names(source: DataSource, role: str = "train") -> list[str]:
    """Class names in label order (sorted folder names for ImageFolder)."""
    if source.kind == FASHION_MNIST:
        return list(FASHION_MNIST_CLASSES)
    folder = _split_dir(source, role)
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not names:
        raise DataError(f"{folder} has no class folders; put each class's images in {folder}/<class name>/")
    return names


def format_names(names: list[str], limit: int = 10) -> str:
    """A class list for messages: the first `limit` names, and how many there are in all when that is more."""
    shown = ", ".join(names[:limit])
    return f"[{shown}]" if len(names) <= limit else f"[{shown}, ... ({len(names)} in all)]"


def check_classes(source: DataSource, role: str, expected: list[str], owner: str) -> None:
    """Refuse a split whose class names, in label order, are not `expected` (the classes of `owner`).

    A label is a position in the sorted list of class folders, so a split with other names would be scored
    against the wrong labels without any error: {cat, dog} against {a_dog, b_cat} reports 0% instead of 100%.
    """
    found = class_names(source, role)
    if found != expected:
        split = source.splits[role]
        where = f"{FASHION_MNIST} {split}" if source.kind == FASHION_MNIST else source.root / split
        raise DataError(f"{where} has classes {format_names(found)} but {owner} has classes "
                        f"{format_names(expected)}; labels follow the class (folder) names, so both need the same ones")


def load_image(path: str) -> Image.Image:
    """Open an image as RGB, or raise a DataError that names the file.

    A module-level function so DataLoader workers can pickle it.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoding errors (UnidentifiedImageError is OSError)
        raise DataError(f"cannot decode image {path} ({e}). Delete or replace the file; "
                        "`fastvits train --check-data` lists every unreadable image before training.") from e


def _open_folder(source: DataSource, role: str, transform: Any) -> ImageFolder:
    folder = _split_dir(source, role)
    try:
        dataset = ImageFolder(str(folder), transform=transform, loader=load_image, allow_empty=True)
    except FileNotFoundError as e:  # torchvision: no class folders at all
        raise DataError(f"{folder} has no class folders ({e}); use ROOT/<split>/<class>/<image>") from e
    counts = np.bincount(np.asarray(dataset.targets, dtype=np.int64), minlength=len(dataset.classes))
    empty = [str(folder / name) for name, n in zip(dataset.classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"class folder(s) without images: {', '.join(empty)}. Add images to them or remove them "
            f"(image files end in {', '.join(IMG_EXTENSIONS)})."
        )
    return dataset


def open_dataset(source: DataSource, role: str, transform: Any, limit: int | None = None) -> Dataset:
    """The "train" or "val" split of `source` with `transform`, optionally cut to `limit` samples.

    Only that split has to exist (a folder for evaluation may hold just val/); `check_classes` compares classes.
    The cut takes a fixed random subset (seed 0), so it keeps the class balance and is the same every run.
    """
    if source.kind == FASHION_MNIST:
        dataset: Dataset = FashionMNIST(source.splits[role], root=source.root, transform=transform)
    else:
        dataset = _open_folder(source, role, transform)
    if limit is not None and limit < len(dataset):
        keep = np.sort(np.random.default_rng(0).permutation(len(dataset))[:limit])
        dataset = Subset(dataset, keep.tolist())
    return dataset


def check_images(source: DataSource, roles: tuple[str, ...] = ("train", "val"), rank: int = 0,
                 world_size: int = 1) -> int:
    """Decode every image of the folder splits `roles` and report the failures of all of them at once.

    Each rank decodes its share of the images; the failures are gathered, so every rank raises the whole list.

    Returns:
        The number of images checked (by all ranks).
    """
    if source.kind == FASHION_MNIST:
        return 0
    checked, bad = 0, []
    for role in roles:
        samples = _open_folder(source, role, transform=None).samples[rank::world_size]
        checked += len(samples)
        bad += [failure for path, _ in samples if (failure := _decode_failure(path)) is not None]
    shares = all_gather_objects((checked, bad))
    bad = sorted(failure for _, part in shares for failure in part)
    if bad:
        listing = "\n  ".join(bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        raise DataError(f"{len(bad)} image(s) cannot be decoded; delete or replace them:\n  {listing}")
    return sum(count for count, _ in shares)


def _decode_failure(path: str) -> str | None:
    """"PATH (reason)" if the image cannot be decoded, else None."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, SyntaxError) as e:
        return f"{path} ({e})"
    return None


def resolve_input_config(model: torch.nn.Module, source: DataSource,
                         img_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Input size, interpolation, mean/std and crop of the model (timm's `pretrained_cfg`), adapted to the data.

    Fashion-MNIST's 28x28 images are upsampled to 32x32 (the smallest multiple of a 32x stride) and are not
    centre-cropped for evaluation unless `img_size` says otherwise.
    """
    config = resolve_data_config(model=model)
    if source.kind == FASHION_MNIST:
        config.update(input_size=(3, 32, 32), crop_pct=1.0)
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], *img_size)
    return config


def train_transform(config: dict[str, Any], recipe: Recipe) -> Any:
    """The training augmentation pipeline of `recipe` (timm's ImageNet train transforms)."""
    return create_transform(
        config["input_size"], is_training=True, scale=recipe.scale, ratio=recipe.ratio, hflip=recipe.hflip,
        color_jitter=recipe.color_jitter, auto_augment=recipe.auto_augment,
        interpolation=recipe.train_interpolation, mean=config["mean"], std=config["std"],
        re_prob=recipe.re_prob, re_mode=recipe.re_mode,
    )


def eval_transform(config: dict[str, Any]) -> Any:
    """Resize, centre crop and normalise as the model's data config says."""
    return create_transform(
        config["input_size"], is_training=False, interpolation=config["interpolation"], mean=config["mean"],
        std=config["std"], crop_pct=config["crop_pct"], crop_mode=config.get("crop_mode"),
    )
