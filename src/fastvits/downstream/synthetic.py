"""Two small datasets made on the spot, each written in both formats at once (`write_dataset`).

`make_shapes_dataset` renders rectangles, ellipses and triangles with exact masks; `make_coins_dataset`
thresholds scikit-image's photo of 24 coins into instance masks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, filters, measure, morphology

from .annotations import encode_mask, mask_to_box

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")


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
