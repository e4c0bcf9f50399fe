"""`fastvits demo`: the end-to-end tour on Fashion-MNIST, a few minutes on a 2-core CPU.

It runs, as a user would type them (each command is printed first):
  1. `fastvits train`     a small FasterViT, one epoch on 20k Fashion-MNIST training images
  2. `fastvits validate`  top-1/top-5 and loss on the 10k test images
  3. `fastvits predict`   top-3 classes for three test images saved as PNG
  4. `fastvits bench`     the speed table: FasterViT-0, LITv2-S and ResNet-50 at 224, batch 1 and 32
and ends by saying where everything is. Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import torch

from .train.fashion_mnist import SMALL_MODELS, FashionMNIST

__all__ = ["register", "run_demo"]

BENCH_MODELS = ("fastervit_0_224", "litv2_s", "resnet50")


def _fastvits(args: list[str]) -> None:
    """Run one `fastvits` command in this process, echoed first; stop the demo if it fails."""
    from .cli import main

    print(f"\n$ fastvits {' '.join(shlex.quote(a) for a in args)}", flush=True)
    code = main(args)
    if code:
        raise SystemExit(f"fastvits demo: `fastvits {args[0]}` failed with status {code}")


def save_test_images(out: Path, indices: tuple[int, ...] = (0, 1, 2)) -> list[str]:
    """Fashion-MNIST test images as PNG files named after their true class."""
    test = FashionMNIST("test")
    paths = []
    for index in indices:
        label = test.classes[int(test.targets[index])].replace("/", "-").replace(" ", "_")
        path = out / f"test_{index}_{label}.png"
        test[index][0].save(path)
        paths.append(str(path))
    return paths


def run_demo(out: Path, train_samples: int = 20000, batch_size: int = 128, bench: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()  # training sets its own share of the cores; the bench gets them all back
    run = out / "fastervit"
    model, kwargs = SMALL_MODELS["fastervit"]
    train = ["train", "--model", model, "--model-kwargs", json.dumps(kwargs, separators=(",", ":")),
             "--data", "fashion-mnist", "--epochs", "1", "--train-samples", str(train_samples), "-b", str(batch_size),
             "--output", str(run)]
    _fastvits(train + (["--resume"] if (run / "checkpoints").is_dir() else []))
    _fastvits(["validate", "--run", str(run), "--results-file", str(out / "validate.json")])
    _fastvits(["predict", *save_test_images(out), "--run", str(run), "--topk", "3"])
    if bench:
        _fastvits(["bench", *BENCH_MODELS, "-b", "1", "32", "--rounds", "3", "--threads", str(threads),
                   "--out", str(out / "bench"), "--name", "speed"])
    print(f"\nfastvits demo: outputs in {out}/\n"
          f"  {run}/  weights (safetensors), checkpoints, metrics.csv/json, loss.png, accuracy.png\n"
          f"  {out}/validate.json  test-set metrics;  {out}/test_*.png  the images predicted above\n"
          + (f"  {out}/bench/speed.{{csv,json,png}}  the speed table\n" if bench else ""))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end tour: train, validate, predict, bench (Fashion-MNIST, CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--train-samples", type=int, default=20000, help="training images for the one epoch")
    p.add_argument("-b", "--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the speed table")
    p.set_defaults(func=lambda args: run_demo(args.out, args.train_samples, args.batch_size, args.bench))
