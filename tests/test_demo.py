"""`fastvits demo` end to end (without the speed table) on a tiny stand-in for Fashion-MNIST."""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvits.cli import main


def write_idx(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The two gzip'ed IDX files of one split: big-endian header, then raw uint8 values."""
    n, rows, cols = images.shape
    with gzip.open(folder / f"{stem[0]}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes())
    with gzip.open(folder / f"{stem[0]}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.fixture
def tiny_fashion_mnist(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for stem, n in ((("train",), 64), (("t10k",), 24)):
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder, stem, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), labels)
    monkeypatch.setenv("FASTVITS_FASHION_MNIST", str(folder))
    threads = torch.get_num_threads()
    yield folder
    torch.set_num_threads(threads)  # in-process training sets its own thread count


def test_demo_trains_validates_predicts_and_says_where(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-samples", "64", "-b", "16", "--no-bench"]) == 0
    printed = capsys.readouterr().out
    assert "$ fastvits train" in printed and "$ fastvits predict" in printed and f"outputs in {out}" in printed
    assert (out / "fastervit" / "model.safetensors").is_file() and (out / "fastervit" / "accuracy.png").is_file()
    assert json.loads((out / "validate.json").read_text())["samples"] == 24
    assert len(list(out.glob("test_*.png"))) == 3
