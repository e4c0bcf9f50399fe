"""`fastvits bench`: parameters, GMACs and measured throughput of models on this machine."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..registry import create_model, list_models


def count_gmacs(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward (convs, linears, attention matmuls) in billions, per image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / x.shape[0] / 1e9


def throughput(model: torch.nn.Module, x: torch.Tensor, rounds: int, warmup: int = 1) -> float:
    """Median images per second over `rounds` timed forwards."""
    times = []
    with torch.no_grad():
        for i in range(warmup + rounds):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


def run(args: argparse.Namespace) -> int:
    names = args.models or ["fastervit_0_224"]
    print(f"{'model':<28} {'params (M)':>10} {'GMACs':>8} {'img/s':>8}   batch {args.batch_size}, {args.img_size}px, "
          f"{torch.get_num_threads()} threads")
    for name in names:
        model = create_model(name).eval()
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<28} {params:>10.2f} {count_gmacs(model, x[:1]):>8.2f} {throughput(model, x, args.rounds):>8.1f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="parameters, GMACs and throughput of models on this machine")
    p.add_argument("models", nargs="*", help=f"model names (default fastervit_0_224); any of {len(list_models())}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=run)
