"""Shared test helpers: parity fixtures generated from the official code."""

import json
from pathlib import Path

import safetensors.torch
import torch

import fastvits

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(family: str, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(json metadata, tensors) of a parity fixture generated from the official code."""
    meta = json.loads((FIXTURES / family / f"{name}.json").read_text())
    return meta, safetensors.torch.load_file(str(FIXTURES / family / f"{name}.safetensors"))


def fixture_checkpoint(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """Write the fixture's official state dict as a standalone checkpoint file, as users would have it."""
    sd = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    safetensors.torch.save_file(sd, str(path))
    return path


# family prefix -> overrides that shrink a variant while keeping its structure (windows, carrier tokens, layer scale)
SMALL = {
    "fastervit": dict(dim=16, in_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)),
    "litv2": dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)),
}


# `fastvits bench` options for quick runs: a tiny FasterViT (--model-kwargs) and one short round
BENCH_TINY = '{"dim": 16, "in_dim": 16, "depths": [1, 1, 1, 1]}'
BENCH_FAST = [
    "--rounds", "1", "--max-rounds", "1", "--warmup", "1", "--sample-time", "0", "--roof", "50", "--threads", "1",
]


def small_model(name: str, **kwargs) -> torch.nn.Module:
    """A registered variant at reduced width and depth, for fast CPU tests."""
    family = next(f for f in SMALL if name.startswith(f))
    return fastvits.create_model(name, **SMALL[family], **kwargs)


LITV2_ULPS = 168  # 2e-5 of each value's (floored) magnitude: 2e-5 / float32 eps


def assert_same_rounding(actual: torch.Tensor, expected: torch.Tensor, ulps: int = 16) -> None:
    """Agreement to a few float32 ulps: the check behind our "bit-exact" parity claims.

    With the plain attention path our op order is the official one, so on the machine that made the fixtures
    the outputs are identical. Other CPUs pick other BLAS kernels whose accumulation order differs; that moves
    results by a few ulps per layer: single layers and FasterViT stay within 16. Deeper float32 stacks drift
    further with the CPU and thread count (LITv2's: 22 to 91 ulps measured on AMD EPYC and Intel Xeon), so
    their tests pass `LITV2_ULPS` (2e-5 relative, about the 1e-5 abs + 1e-5 rel parity bound); their float64
    checks (1e-10) show the op order is the official one. The tolerance is relative to each element's magnitude,
    floored at the tensor's mean magnitude.
    """
    scale = expected.abs().clamp_min(expected.abs().mean().item())
    diff = (actual - expected).abs()
    bound = ulps * torch.finfo(expected.dtype).eps * scale
    worst = (diff / scale).max().item() / torch.finfo(expected.dtype).eps
    assert bool((diff <= bound).all()), f"differs by up to {worst:.1f} ulps (allowed {ulps})"
