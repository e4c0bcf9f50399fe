"""The two on-disk formats of annotated images, read into one labelling: label 0 is background, classes are 1..K.

- COCO format (`CocoImages`): an annotation JSON plus an image folder. Category ids map to labels 1..K in id order.
- Image + mask-PNG folders (`MaskFolderImages`): `images/NAME.{png,jpg}` with `masks/NAME.png` holding one class
  id per pixel (0 background, 255 ignore) and a `classes.txt` naming classes 1..K, one per line. For detection
  each connected region of a class is one instance.

`open_annotated_images` opens either. User mistakes in either format (a missing key, an undecodable image, a mask
of the wrong size, ...) raise the `fastvits.downstream.errors` types, whose messages name the file and the fix.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from skimage import measure

from .annotations import Annotations, coco_index, encode_mask, load_coco, mask_to_box, read_classes
from .errors import DownstreamDataError, DownstreamSettingsError, MissingFileError
from .segmentation import IGNORE_INDEX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """`PIL.Image.open` whose decoding errors, on opening or on reading the pixels, name the file and the fix."""
    try:
        with Image.open(path) as im:
            yield im
    except OSError as e:  # PIL.UnidentifiedImageError, truncated files, unreadable files
        raise DownstreamDataError(f"cannot read image {path} ({e}); replace or remove the file") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    with open_image(path) as im:
        return im.size[::-1]


def load_rgb(path: Path) -> np.ndarray:
    """Reads an image as (H, W, 3) uint8."""
    with open_image(path) as im:
        return np.array(im.convert("RGB"))


class AnnotatedImages(ABC):
    """Images with instance annotations, whatever the file format; labels are 1..K, 0 is background."""

    classes: list[str]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image_path(self, index: int) -> Path: ...

    @abstractmethod
    def image_id(self, index: int) -> int:
        """The id predictions carry into COCO evaluation."""

    @abstractmethod
    def load_annotations(self, index: int) -> Annotations: ...

    @abstractmethod
    def load_semantic(self, index: int) -> np.ndarray:
        """(H, W) uint8 class ids, 255 where the label is unknown."""

    @abstractmethod
    def coco_gt(self) -> COCO:
        """Ground truth for pycocotools, with the category ids `category_id` returns."""

    @abstractmethod
    def category_id(self, label: int) -> int: ...

    def missing_masks(self) -> str | None:
        """Which instances have no mask, said for an error message; None when every instance has one."""
        return None

    def require_masks(self, fix: str) -> None:
        """Refuses, with `fix` in the message, data where some instances have no mask.

        Raises:
            DownstreamDataError: `missing_masks` found some.
        """
        missing = self.missing_masks()
        if missing:
            raise DownstreamDataError(f"{missing}; {fix}")

    def load_image(self, index: int) -> np.ndarray:
        return load_rgb(self.image_path(index))


class CocoImages(AnnotatedImages):
    """A COCO-format annotation file and its image folder.

    The file's structure is checked on opening (`load_coco`); each image's size is checked against the
    `height` and `width` the file gives it when its annotations are loaded.

    Raises:
        MissingFileError: Missing annotation file, image folder or images.
        DownstreamDataError: A malformed annotation file (see `load_coco`).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path) -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if not self.ann_file.is_file():
            raise MissingFileError(f"annotation file {self.ann_file} not found; pass a COCO-format JSON with --ann")
        if not self.image_dir.is_dir():
            raise MissingFileError(f"image folder {self.image_dir} not found; pass the folder holding the images")
        self.coco = load_coco(self.ann_file)
        self.category_ids = sorted(self.coco.getCatIds())
        self.classes = [self.coco.cats[c]["name"] for c in self.category_ids]
        self._labels = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.ids = sorted(self.coco.getImgIds())
        missing = [
            self.coco.imgs[i]["file_name"]
            for i in self.ids
            if not (self.image_dir / self.coco.imgs[i]["file_name"]).is_file()
        ]
        if missing:
            raise MissingFileError(
                f"{len(missing)} of {len(self.ids)} images listed in {self.ann_file} are missing from {self.image_dir} "
                f"(first: {missing[:3]}); check the image folder"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def image_id(self, index: int) -> int:
        return self.ids[index]

    def category_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    def coco_gt(self) -> COCO:
        return self.coco

    def missing_masks(self) -> str | None:
        unmasked = sorted(a["id"] for a in self.coco.anns.values() if not a.get("segmentation"))
        if not unmasked:
            return None
        return (
            f"{len(unmasked)} of {len(self.coco.anns)} annotations in {self.ann_file} have no segmentation mask "
            f"(first ids: {unmasked[:3]})"
        )

    def _checked_size(self, index: int) -> tuple[int, int]:
        """The image's (height, width), checked against the file's: masks are decoded at the file's size."""
        info, path = self.coco.imgs[self.ids[index]], self.image_path(index)
        size = image_size(path)
        if size != (info["height"], info["width"]):
            raise DownstreamDataError(
                f"{self.ann_file} gives image {info['file_name']} width {info['width']} and height "
                f"{info['height']}, but {path} is {size[1]}x{size[0]}; correct 'width' and 'height' there"
            )
        return size

    def _load_mask(self, ann: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
        """(H, W) mask of one annotation; annToMask decodes polygons, RLE and uncompressed RLE alike."""
        mask = self.coco.annToMask(ann)
        if mask.shape != size:
            raise DownstreamDataError(
                f"{self.ann_file}: the mask of annotation {ann['id']} is {mask.shape[1]}x{mask.shape[0]} but its "
                f"image is {size[1]}x{size[0]}; correct the 'size' of its RLE 'segmentation'"
            )
        return mask

    def load_annotations(self, index: int) -> Annotations:
        size = self._checked_size(index)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.ids[index]))
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        labels = np.array([self._labels[a["category_id"]] for a in anns], np.int64)
        iscrowd = np.array([bool(a["iscrowd"]) for a in anns], bool)
        masks = None
        if all(a.get("segmentation") for a in anns):
            masks = np.zeros((len(anns), *size), np.uint8)
            for i, a in enumerate(anns):
                masks[i] = self._load_mask(a, size)
        return Annotations(boxes, labels, masks, iscrowd)

    def load_semantic(self, index: int) -> np.ndarray:
        ann = self.load_annotations(index)
        if ann.masks is None:
            raise DownstreamDataError(
                f"{self.image_path(index)} has box-only annotations; segmentation needs 'segmentation' masks"
            )
        if len(self.classes) >= IGNORE_INDEX:
            raise DownstreamDataError(f"{len(self.classes)} categories do not fit 8-bit class masks (255 is ignore)")
        semantic = np.zeros(ann.masks.shape[1:], np.uint8)
        for i in np.argsort(-ann.masks.sum((1, 2))):  # large first, so small objects stay visible on top
            semantic[ann.masks[i] > 0] = IGNORE_INDEX if ann.iscrowd[i] else ann.labels[i]
        return semantic


class MaskFolderImages(AnnotatedImages):
    """An image folder with a folder of class-id mask PNGs of the same names.

    Args:
        image_dir: Images.
        mask_dir: One single-channel PNG per image: 0 background, 1..K classes, 255 ignore.
        classes: Names of classes 1..K.

    Raises:
        MissingFileError: Missing folders, no images, or an image without its mask.
    """

    def __init__(self, image_dir: str | Path, mask_dir: str | Path, classes: Sequence[str]) -> None:
        self.image_dir, self.mask_dir, self.classes = Path(image_dir), Path(mask_dir), list(classes)
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise MissingFileError(f"folder {folder} not found; pass --images and --masks folders")
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise MissingFileError(
                f"{self.image_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images; pass the folder that holds them"
            )
        missing = [p.name for p in self.images if not self._mask_path(p).is_file()]
        if missing:
            raise MissingFileError(
                f"{len(missing)} images in {self.image_dir} have no mask NAME.png in {self.mask_dir} "
                f"(first: {missing[:3]}); add the masks or remove the images"
            )

    def _mask_path(self, image_path: Path) -> Path:
        return self.mask_dir / (image_path.stem + ".png")

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def image_id(self, index: int) -> int:
        return index + 1  # COCO ids start at 1

    def category_id(self, label: int) -> int:
        return label

    def load_semantic(self, index: int) -> np.ndarray:
        """Reads and checks one mask.

        Raises:
            DownstreamDataError: The mask is not single-channel, its size differs from the image's, or it holds
                class ids outside 0..K and 255.
        """
        path = self._mask_path(self.images[index])
        with open_image(path) as im:
            if im.mode not in ("L", "P"):
                raise DownstreamDataError(
                    f"mask {path} has mode {im.mode}; save class ids as a single-channel (L or P) PNG"
                )
            mask = np.asarray(im)
        size = image_size(self.images[index])
        if mask.shape != size:
            raise DownstreamDataError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but image {self.images[index]} is "
                f"{size[1]}x{size[0]}; resize the mask with nearest-neighbour interpolation"
            )
        unknown = sorted(set(np.unique(mask).tolist()) - set(range(len(self.classes) + 1)) - {IGNORE_INDEX})
        if unknown:
            raise DownstreamDataError(
                f"mask {path} holds class ids {unknown}, but only {len(self.classes)} classes are named "
                f"(ids 1..{len(self.classes)}, 0 background, 255 ignore); extend classes.txt or fix the mask"
            )
        return mask

    def load_annotations(self, index: int) -> Annotations:
        semantic = self.load_semantic(index)
        labels, masks = [], []
        for cls in range(1, len(self.classes) + 1):
            regions = measure.label(semantic == cls, connectivity=1)
            for region in range(1, regions.max() + 1):
                labels.append(cls)
                masks.append(regions == region)
        masks_arr = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, *semantic.shape), np.uint8)
        boxes = np.array([mask_to_box(m) for m in masks_arr], np.float32).reshape(-1, 4)
        return Annotations(boxes, np.array(labels, np.int64), masks_arr, np.zeros(len(labels), bool))

    @cached_property
    def _coco(self) -> COCO:
        images, anns = [], []
        for index in range(len(self)):
            ann = self.load_annotations(index)
            h, w = ann.masks.shape[1:]
            images.append(dict(id=self.image_id(index), file_name=self.images[index].name, height=h, width=w))
            for box, label, mask in zip(ann.boxes, ann.labels, ann.masks):
                x1, y1, x2, y2 = box.tolist()
                anns.append(
                    dict(
                        id=len(anns) + 1,
                        image_id=self.image_id(index),
                        category_id=int(label),
                        iscrowd=0,
                        bbox=[x1, y1, x2 - x1, y2 - y1],
                        area=float(mask.sum()),
                        segmentation=encode_mask(mask),
                    )
                )
        categories = [dict(id=i + 1, name=n) for i, n in enumerate(self.classes)]
        return coco_index(dict(images=images, annotations=anns, categories=categories))

    def coco_gt(self) -> COCO:
        return self._coco


def open_annotated_images(
    images: str | Path,
    ann: str | Path | None = None,
    masks: str | Path | None = None,
    classes: str | Path | None = None,
) -> AnnotatedImages:
    """Opens either format: `ann` for COCO, or `masks` (+ `classes`, default `classes.txt` beside `masks`).

    Raises:
        DownstreamSettingsError: Neither or both of `ann` and `masks` given.
    """
    if (ann is None) == (masks is None):
        raise DownstreamSettingsError("give exactly one of a COCO annotation file (--ann) or a mask folder (--masks)")
    if ann is not None:
        return CocoImages(ann, images)
    classes_file = Path(classes) if classes is not None else Path(masks).parent / "classes.txt"
    return MaskFolderImages(images, masks, read_classes(classes_file))
