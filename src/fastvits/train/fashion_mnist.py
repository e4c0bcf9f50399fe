"""Fashion-MNIST read offline from its IDX files (70k 28x28 grey product photos, 10 classes).

The Debian package `dataset-fashion-mnist` installs the four gzip'ed IDX files under
/usr/share/datasets/fashion-mnist; nothing is downloaded. The format is tiny (a big-endian header, then raw
uint8 pixels), so numpy reads it directly and the whole split lives in memory (47 MB for training).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError

__all__ = ["CLASS_NAMES", "DEFAULT_ROOT", "SMALL_MODELS", "FashionMNIST", "find_root"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASTVITS_FASHION_MNIST"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: `root`, else $FASTVITS_FASHION_MNIST, else the Debian location.

    Raises:
        DataError: the files are not there; the message says how to install them.
    """
    folder = Path(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT)
    missing = [name for pair in _FILES.values() for name in pair if _idx_path(folder, name) is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}).\n"
            "  Install it offline on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
            "  or put the four IDX files (.gz or unpacked) from https://github.com/zalandoresearch/fashion-mnist "
            f"in a folder and pass --data fashion-mnist:/that/folder (or set ${ENV_VAR})."
        )
    return folder


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file: 4-byte magic (dtype and rank), one big-endian uint32 per dimension, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        hint = "reinstall it: apt-get install --reinstall dataset-fashion-mnist"
        raise DataError(f"cannot read {path} ({e}); {hint}") from e
    ndim = raw[3] if len(raw) >= 4 else 0
    header_len = 4 * (1 + ndim)
    header = np.frombuffer(raw[:header_len], dtype=">u4") if ndim and len(raw) >= header_len else None
    if header is None or int(header[0]) != magic or len(raw) - header_len != int(np.prod(header[1:])):
        raise DataError(f"{path} is not a valid IDX file (wrong header or size); reinstall or re-download it.")
    shape = tuple(int(d) for d in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    return data.reshape(shape)


class FashionMNIST(Dataset):
    """One split of Fashion-MNIST as RGB PIL images (grey repeated), so any 3-channel model and timm's
    transforms apply unchanged.

    Args:
        split: "train" (60k) or "test" (10k).
        root: folder of the IDX files; see `find_root`.
        transform: applied to each PIL image.
    """

    classes = list(CLASS_NAMES)

    def __init__(self, split: str, root: str | os.PathLike | None = None, transform: Callable | None = None) -> None:
        if split not in _FILES:
            raise ValueError(f"Fashion-MNIST split must be one of {sorted(_FILES)}, got {split!r}")
        folder = find_root(root)
        images_name, labels_name = _FILES[split]
        self.images = _read_idx(_idx_path(folder, images_name), _IMAGE_MAGIC)  # (N, 28, 28) uint8
        self.targets = _read_idx(_idx_path(folder, labels_name), _LABEL_MAGIC).astype(np.int64)  # (N,)
        if len(self.images) != len(self.targets):
            raise DataError(f"Fashion-MNIST {split} in {folder}: {len(self.images)} images but "
                            f"{len(self.targets)} labels; reinstall the files.")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


# Small models for Fashion-MNIST at 32x32 on a 2-core CPU: name -> (registered model, constructor kwargs).
# About 10 MMACs per image: FasterViT 4.1 M params, LITv2 1.6 M (its depthwise convolutions are slow on CPU, so it
# gets a narrower configuration), and resnet10t (4.9 M params, 22 MMACs) as the timm baseline.
SMALL_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "fastervit": ("fastervit_0_any_res", {"dim": 32, "in_dim": 32, "depths": [1, 2, 3, 2],
                                          "num_heads": [2, 4, 8, 16], "window_size": [4, 4, 2, 1]}),
    "litv2": ("litv2_s", {"embed_dim": 32, "depths": [1, 1, 3, 1], "num_heads": [1, 2, 4, 8]}),
    "resnet": ("resnet10t", {}),
}
