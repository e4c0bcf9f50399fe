"""Predictions drawn on their images, saved as PNG.

Figures are built with `matplotlib.figure.Figure`, which renders with Agg and never touches pyplot's global
state or needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

DPI = 100
MIN_SIDE = 640  # small images are drawn larger so that labels stay readable


def palette(n: int) -> np.ndarray:
    """(n, 3) float RGB colours in [0, 1], distinct for up to 20 classes, then repeating.

    tab20 pairs a dark and a light shade of each hue; the dark shades come first so that the first ten
    classes get ten different hues.
    """
    order = np.r_[0:20:2, 1:20:2]
    return np.asarray(colormaps["tab20"](order[np.arange(n) % 20]))[:, :3]


def _canvas(image: np.ndarray) -> tuple[Figure, object]:
    """A figure of the image's shape (at least `MIN_SIDE` pixels on its longer side), axes filling it."""
    h, w = image.shape[:2]
    scale = max(1.0, MIN_SIDE / max(h, w))
    fig = Figure(figsize=(w * scale / DPI, h * scale / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    masks: np.ndarray | None = None,
) -> Path:
    """Draws boxes, class names with scores, and (if given) translucent instance masks.

    Args:
        image: (H, W, 3) uint8.
        boxes: (N, 4) x1, y1, x2, y2.
        labels: (N,) labels in 1..K.
        scores: (N,) confidences.
        classes: Names of labels 1..K.
        path: Output PNG.
        masks: (N, H, W) bool masks.
    """
    colors = palette(len(classes) + 1)
    shown = image.astype(np.float32) / 255
    if masks is not None:
        for label, mask in zip(labels, masks):
            shown[mask] = 0.5 * shown[mask] + 0.5 * colors[label]
    fig, ax = _canvas(image)
    ax.imshow(shown, interpolation="nearest")
    for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colors[label], linewidth=1.5))
        ax.text(
            x1,
            y1,
            f"{classes[label - 1]} {score:.2f}",
            fontsize=7,
            color="white",
            va="bottom",
            bbox=dict(facecolor=colors[label], alpha=0.8, pad=1, linewidth=0),
        )
    fig.savefig(path, dpi=DPI)
    return Path(path)


def draw_segmentation(image: np.ndarray, prediction: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """Blends the predicted classes over the image, with a legend of the classes present.

    Args:
        image: (H, W, 3) uint8.
        prediction: (H, W) class ids, 0 background.
        classes: Names of classes 1..K.
        path: Output PNG.
    """
    colors = palette(len(classes) + 1)
    shown = image.astype(np.float32) / 255
    foreground = prediction > 0
    shown[foreground] = 0.4 * shown[foreground] + 0.6 * colors[prediction[foreground]]
    fig, ax = _canvas(image)
    ax.imshow(shown, interpolation="nearest")
    present = [c for c in np.unique(prediction) if c > 0]
    if present:
        handles = [Patch(color=colors[c], label=classes[c - 1]) for c in present]
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    fig.savefig(path, dpi=DPI)
    return Path(path)
