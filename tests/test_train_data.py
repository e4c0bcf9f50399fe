"""Datasets of `fastvits train`: Fashion-MNIST offline, ImageFolder checks, reproducible sampling.

`make_image_folder` is shared with the other test_train_* modules.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from fastvits.cli import main
from fastvits.train.data import check_images, open_dataset, parse_data
from fastvits.train.errors import DataError
from fastvits.train.fashion_mnist import FashionMNIST, find_root
from fastvits.train.sampling import SeededDataset, TrainSampler


def make_image_folder(root: Path, classes: int = 3, train: int = 16, val: int = 4, size=(20, 24)) -> Path:
    """A learnable ImageFolder: class c is a noisy image of brightness ~c/classes, PNG files of size (H, W)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.normal(255 * (c + 0.5) / classes, 30, size=(*size, 3)).clip(0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        find_root(tmp_path)


def test_fashion_mnist_reads_idx_files():
    try:
        find_root()
    except DataError as e:
        pytest.skip(f"{str(e).splitlines()[0]} Install it with: apt-get install dataset-fashion-mnist")
    test = FashionMNIST("test")
    assert len(test) == 10_000 and test.images.shape == (10_000, 28, 28)
    assert sorted(np.unique(test.targets)) == list(range(10))
    image, label = test[0]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 9  # the first test image is an ankle boot
    assert len(open_dataset(parse_data("fashion-mnist"), "train", None, limit=100)) == 100


def test_broken_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data", train=2, val=1)
    broken = root / "train" / "class_1" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    dataset = open_dataset(parse_data(str(root)), "train", None)
    index = [p for p, _ in dataset.samples].index(str(broken))
    with pytest.raises(DataError, match="broken.png"):
        dataset[index]
    with pytest.raises(DataError, match=r"(?s)1 image\(s\) cannot be decoded.*broken.png"):
        check_images(parse_data(str(root)), ("train",))


def test_check_data_lists_the_unreadable_images_of_every_split(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", train=2, val=1)
    for broken in (root / "train" / "class_1" / "broken.png", root / "val" / "class_2" / "broken.jpg"):
        broken.write_bytes(b"not an image")
    assert main(["train", "--model", "test_vit", "--data", str(root), "--img-size", "32", "--check-data",
                 "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "2 image(s) cannot be decoded" in err
    assert "train/class_1/broken.png" in err and "val/class_2/broken.jpg" in err


def test_empty_class_folder_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data", train=2, val=1)
    (root / "train" / "class_9").mkdir()
    with pytest.raises(DataError, match="without images: .*class_9"):
        open_dataset(parse_data(str(root)), "train", None)


def test_missing_split_explains_layout(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="ROOT/train/<class>/<image>"):
        open_dataset(parse_data(str(tmp_path / "data")), "train", None)


def test_sampler_shards_one_global_batch_per_step():
    """Two ranks with batch 4 see exactly the samples and seeds of one process with batch 8, step by step."""
    single = list(TrainSampler(50, step_size=8, rank=0, world_size=1, seed=3))
    ranks = [list(TrainSampler(50, step_size=8, rank=r, world_size=2, seed=3)) for r in (0, 1)]
    assert len(single) == 48 and all(len(r) == 24 for r in ranks)
    for step in range(6):
        together = ranks[0][4 * step: 4 * step + 4] + ranks[1][4 * step: 4 * step + 4]
        assert sorted(together) == sorted(single[8 * step: 8 * step + 8])


def test_sampler_resumes_mid_epoch_and_reshuffles_per_epoch():
    sampler = TrainSampler(40, step_size=4, rank=0, world_size=1, seed=0)
    full = list(sampler)
    sampler.set_epoch(0, start_step=3)
    assert list(sampler) == full[12:] and len(sampler) == 28
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in full]


class _RandomItem(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3) + np.random.rand() + index


def test_seeded_dataset_is_pure_and_leaves_global_rng_alone():
    dataset = SeededDataset(_RandomItem())
    torch.manual_seed(1)
    np.random.seed(1)
    first = dataset[(2, 123)]
    after = (torch.rand(1), np.random.rand())
    torch.manual_seed(1)
    np.random.seed(1)
    torch.rand(5)  # whatever ran before must not matter
    assert torch.equal(dataset[(2, 123)], first)
    torch.manual_seed(1)
    np.random.seed(1)
    dataset[(7, 5)]
    assert torch.equal(torch.rand(1), after[0]) and np.random.rand() == after[1]
