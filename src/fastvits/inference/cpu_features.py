"""What this CPU runs natively, read at run time (never assumed from a machine model)."""

from __future__ import annotations

import torch

__all__ = ["native_bf16"]


def native_bf16() -> str | None:
    """The CPU's native bf16 matrix instructions ("AMX-BF16" or "AVX512-BF16"), or None where torch emulates bf16
    (about 10x slower than float32 on an AVX2-only CPU)."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX-BF16"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None
