"""Datasets for detection and segmentation, and two small datasets made on the spot.

Two on-disk formats are read, both into one labelling: label 0 is background and classes are 1..K.
- COCO format: an annotation JSON plus an image folder. Category ids map to labels 1..K in id order.
- Image + mask-PNG folders: `images/NAME.{png,jpg}` with `masks/NAME.png` holding one class id per pixel
  (0 background, 255 ignore) and a `classes.txt` naming classes 1..K, one per line. For detection each
  connected region of a class is one instance.

`make_shapes_dataset` renders rectangles, ellipses and triangles with exact masks; `make_coins_dataset`
thresholds scikit-image's photo of 24 coins into instance masks. Both write both formats at once.

User mistakes in either format (a missing key, an undecodable image, a mask of the wrong size, ...) raise the
`fastvits.downstream.errors` types, whose messages name the file and the fix.
"""

from __future__ import annotations

import contextlib
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage
from skimage import data, filters, measure, morphology
from torch.utils.data import Dataset

from .errors import DownstreamDataError, DownstreamSettingsError, MissingFileError
from .segmentation import IGNORE_INDEX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")
# The keys every entry of a COCO instances file must have: the ones reading, training and evaluation use.
# `iscrowd`, `area` and `segmentation` are optional (see `load_coco`).
COCO_KEYS: dict[str, tuple[str, ...]] = dict(
    images=("id", "file_name", "height", "width"),
    annotations=("id", "image_id", "category_id", "bbox"),
    categories=("id", "name"),
)


@dataclass
class Annotations:
    """The instances in one image, in pixel coordinates of the original image.

    Attributes:
        boxes: (N, 4) float32 boxes as x1, y1, x2, y2.
        labels: (N,) int64 labels in 1..K.
        masks: (N, H, W) uint8 instance masks, or None for box-only annotations.
        iscrowd: (N,) bool; crowd regions are ignored in training and matched leniently by COCO eval.
    """

    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    iscrowd: np.ndarray


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) binary mask -> COCO run-length encoding with a JSON-ready string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_to_box(mask: np.ndarray) -> list[float]:
    """Tight x1, y1, x2, y2 box around a non-empty mask, with x2/y2 one past the last pixel."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def read_classes(path: str | Path) -> list[str]:
    """Class names for labels 1..K, one per line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"classes file {path} not found; write the class names for mask values 1..K there")
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise DownstreamDataError(f"classes file {path} is empty; write the class names for mask values 1..K there")
    return classes


def read_json(path: Path) -> Any:
    """Parses a JSON file; a syntax error names the file, line and column (json's message has only the last two)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DownstreamDataError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; fix the file there"
        ) from None
    except UnicodeDecodeError:
        raise DownstreamDataError(f"{path} is not a text file; pass a JSON file") from None


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


def _index(dataset: dict[str, Any]) -> COCO:
    """A pycocotools index over an in-memory COCO dataset (pycocotools prints progress; it is silenced)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_coco_structure(dataset: Any, ann_file: Path) -> None:
    """Checks the sections and keys in `COCO_KEYS`, unique ids, and at least one image: pycocotools checks
    none of these, and its KeyErrors name neither the file nor the entry.
    """
    if not isinstance(dataset, dict):
        raise DownstreamDataError(
            f"{ann_file} holds a JSON {type(dataset).__name__}; a COCO annotation file is an object with "
            f"{', '.join(map(repr, COCO_KEYS))} lists"
        )
    for section, keys in COCO_KEYS.items():
        entries = dataset.get(section)
        if not isinstance(entries, list):
            raise DownstreamDataError(
                f"{ann_file} has no {section!r} list; a COCO annotation file needs {', '.join(map(repr, COCO_KEYS))}"
            )
        for i, entry in enumerate(entries):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DownstreamDataError(
                    f"{ann_file}: {section}[{i}] has no {', '.join(map(repr, missing))}; "
                    f"every entry of {section!r} needs {', '.join(map(repr, keys))}"
                )
        ids = [entry["id"] for entry in entries]
        if len(set(ids)) < len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            raise DownstreamDataError(f"{ann_file}: {section!r} repeats ids {repeated[:5]}; give each entry its own id")
    if not dataset["images"]:
        raise DownstreamDataError(
            f"{ann_file} lists no images, so there is nothing to train on or evaluate; list them under 'images'"
        )


def _fill_defaults(coco: COCO) -> None:
    """Gives annotations without them `iscrowd` 0 and `area`, which pycocotools' evaluation reads.

    Hand-written box-only files often leave both out. `area` is COCO's definition: the mask's pixel count when
    the annotation has a mask, else the box's w * h.
    """
    for ann in coco.anns.values():
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            has_mask = bool(ann.get("segmentation"))
            ann["area"] = float(mask_utils.area(coco.annToRLE(ann)) if has_mask else ann["bbox"][2] * ann["bbox"][3])


def load_coco(ann_file: Path) -> COCO:
    """Reads and checks a COCO instances file, filling in optional keys.

    Raises:
        DownstreamDataError: Not JSON; a section, key or image missing; repeated ids; annotations that refer to
            images or categories the file does not list.
    """
    dataset = read_json(ann_file)
    _check_coco_structure(dataset, ann_file)
    coco = _index(dataset)
    for key, section, listed in (("image_id", "images", coco.imgs), ("category_id", "categories", coco.cats)):
        unknown = sorted({a[key] for a in coco.anns.values()} - set(listed))
        if unknown:
            raise DownstreamDataError(
                f"{ann_file}: annotations use {key.replace('_', ' ')}s {unknown[:5]} that {section!r} does not "
                f"list; add them to {section!r} or drop those annotations"
            )
    _fill_defaults(coco)
    return coco


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
        return _index(dict(images=images, annotations=anns, categories=categories))

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


def write_dataset(
    root: str | Path, classes: Sequence[str], samples: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
) -> Path:
    """Writes images in both formats: `images/`, `masks/` + `classes.txt`, and `annotations.json` (COCO).

    Args:
        root: Output folder.
        classes: Names of labels 1..K.
        samples: (name, (H, W, 3) uint8 image, (N,) labels, (N, H, W) non-overlapping bool masks).

    Returns:
        `root`.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for image_id, (name, image, labels, masks) in enumerate(samples, start=1):
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        semantic = np.zeros(image.shape[:2], np.uint8)
        for label, mask in zip(labels, masks):
            semantic[mask] = label
            x1, y1, x2, y2 = mask_to_box(mask)
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=image_id,
                    category_id=int(label),
                    iscrowd=0,
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                    area=float(mask.sum()),
                    segmentation=encode_mask(mask),
                )
            )
        Image.fromarray(semantic).save(root / "masks" / f"{name}.png")
        images.append(dict(id=image_id, file_name=f"{name}.png", height=image.shape[0], width=image.shape[1]))
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(classes)]
    (root / "annotations.json").write_text(json.dumps(dict(images=images, annotations=anns, categories=categories)))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def _shape_mask(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool mask of one shape filling its box, tested at pixel centres so it is exact."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    if kind == "rectangle":
        return np.ones((h, w), bool)
    if kind == "ellipse":
        return ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2 <= 1
    # Triangle with one vertex on the top edge and two bottom corners, then flipped/rotated at random.
    # Inside = right of the edge apex->(0, h) and left of the edge apex->(w, h).
    apex = rng.uniform(0, w)
    mask = ((xs - apex) * h + ys * apex >= 0) & ((apex - xs) * h + ys * (w - apex) >= 0)
    if rng.random() < 0.5:
        mask = mask[::-1]
    if h == w and rng.random() < 0.5:
        mask = mask.T
    return np.ascontiguousarray(mask)


def render_shapes(
    rng: np.random.Generator, size: int = 128, max_shapes: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws 1..max_shapes non-overlapping shapes on a noisy gradient.

    Colours are random and unrelated to the class, so a model has to learn the shape.

    Returns:
        (size, size, 3) uint8 image, (N,) labels in 1..3 (`SHAPE_CLASSES`), (N, size, size) bool masks.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 120, 3)
    slope = rng.uniform(-40, 40, (2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1] + rng.normal(0, 6, (size, size, 3))
    occupied = np.zeros((size, size), bool)
    labels, masks = [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            h, w = rng.integers(size // 8, int(size / 2.5), 2)
            if rng.random() < 0.3:
                w = h  # some squares and circles
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            if not occupied[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2].any():
                break
        else:
            continue
        label = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        mask = np.zeros((size, size), bool)
        mask[y : y + h, x : x + w] = _shape_mask(SHAPE_CLASSES[label - 1], int(h), int(w), rng)
        color = (base + 80 + rng.uniform(0, 100, 3)) % 256  # stays distinguishable from the background
        image[mask] = color + rng.normal(0, 6, (mask.sum(), 3))
        occupied |= mask
        labels.append(label)
        masks.append(mask)
    return np.clip(image, 0, 255).astype(np.uint8), np.array(labels, np.int64), np.stack(masks)


def make_shapes_dataset(
    root: str | Path, num_images: int = 64, size: int = 128, max_shapes: int = 4, seed: int = 0
) -> Path:
    """Writes `num_images` synthetic shape images with exact ground truth to `root` (see `write_dataset`)."""
    rng = np.random.default_rng(seed)
    samples = ((f"{i:05d}", *render_shapes(rng, size, max_shapes)) for i in range(num_images))
    return write_dataset(root, SHAPE_CLASSES, samples)


def coins_instances() -> tuple[np.ndarray, np.ndarray]:
    """Instance masks of the 24 coins in scikit-image's `coins` photo, by thresholding.

    The lighting falls off to the bottom left, so a local threshold separates coins from background where
    a single Otsu level merges or loses some; closing and hole filling then make each coin one solid region.

    Returns:
        (H, W, 3) uint8 image and (N, H, W) bool masks, one per coin.
    """
    gray = data.coins()
    foreground = gray > filters.threshold_local(gray, 151, offset=-10)
    foreground = morphology.closing(foreground, morphology.disk(3))
    foreground = morphology.opening(ndimage.binary_fill_holes(foreground), morphology.disk(2))
    regions = measure.label(foreground)
    masks = np.stack([regions == r.label for r in measure.regionprops(regions) if r.area > 300])
    return np.repeat(gray[..., None], 3, axis=2), masks


def make_coins_dataset(root: str | Path) -> Path:
    """Writes the coins photo and its masks (class "coin") to `root`, plus a mirrored copy as a second image."""
    image, masks = coins_instances()
    labels = np.ones(len(masks), np.int64)
    samples = [("coins", image, labels, masks), ("coins_flipped", image[:, ::-1].copy(), labels, masks[:, :, ::-1])]
    return write_dataset(root, ["coin"], samples)
