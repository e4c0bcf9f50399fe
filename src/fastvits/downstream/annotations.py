"""Annotation files: COCO instances files read and checked, classes files, JSON, and masks as COCO RLE and boxes.

`load_coco` checks what pycocotools does not (sections, keys, unique ids, references to listed images and
categories) and fills in the optional `iscrowd` and `area`. Mistakes raise the `fastvits.downstream.errors`
types, whose messages name the file and the fix.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .errors import DownstreamDataError, MissingFileError

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


def coco_index(dataset: dict[str, Any]) -> COCO:
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
    coco = coco_index(dataset)
    for key, section, listed in (("image_id", "images", coco.imgs), ("category_id", "categories", coco.cats)):
        unknown = sorted({a[key] for a in coco.anns.values()} - set(listed))
        if unknown:
            raise DownstreamDataError(
                f"{ann_file}: annotations use {key.replace('_', ' ')}s {unknown[:5]} that {section!r} does not "
                f"list; add them to {section!r} or drop those annotations"
            )
    _fill_defaults(coco)
    return coco
