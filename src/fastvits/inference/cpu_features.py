"""What this CPU runs natively, read at run time (never assumed from a machine model)."""

from __future__ import annotations

import platform

import torch

__all__ = ["ISA_FLAGS", "cpu_name", "isa_flags", "native_bf16"]

# the /proc/cpuinfo flags that decide low-precision speed: bf16 and int8 dot products, AMX tiles, vector width
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def native_bf16() -> str | None:
    """The CPU's native bf16 matrix instructions ("AMX-BF16" or "AVX512-BF16"), or None where torch emulates bf16
    (about 10x slower than float32 on an AVX2-only CPU)."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX-BF16"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def _cpuinfo() -> tuple[str | None, set[str]]:
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 9R14", "Intel(R) Xeon(R) Platinum 8488C")."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """Which of `ISA_FLAGS` this CPU has (Linux: /proc/cpuinfo), plus torch's own vector capability
    ("torch:AVX512"); elsewhere only the latter."""
    flags = _cpuinfo()[1]
    return [f for f in ISA_FLAGS if f in flags] + [f"torch:{torch.backends.cpu.get_cpu_capability()}"]
