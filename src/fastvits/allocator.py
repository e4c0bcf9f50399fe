"""Which C allocator serves PyTorch's CPU tensors, and running a `fastvits` command under another one.

At large batches on a CPU the allocator decides a good part of the speed: glibc's malloc gives large blocks back to
the system after every forward (tensors above 32 MiB always), so the next forward faults its activations in again;
tcmalloc keeps them. Measured on a 2-core Xeon at batch 32: LITv2 1.44-1.48x, FasterViT 1.17-1.34x faster with
tcmalloc (docs/benchmarks.md, "the allocator"). An allocator has to be loaded before the process starts
(`LD_PRELOAD`), so `fastvits --allocator tcmalloc COMMAND ...` runs the command again in a fresh interpreter with the
library preloaded, as Intel's `ipexrun --memory-allocator` does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ALLOCATORS", "AllocatorNotFound", "current_allocator", "find_allocator", "relaunch_with_allocator"]

ALLOCATORS: dict[str, tuple[str, ...]] = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc.so"),
}
"""Preloadable allocators and their library file names, most common first."""

_INSTALL = {
    "tcmalloc": "apt-get install libtcmalloc-minimal4 (Debian/Ubuntu), dnf install gperftools-libs, or conda install "
    "gperftools",
    "jemalloc": "apt-get install libjemalloc2 (Debian/Ubuntu), dnf install jemalloc, or conda install jemalloc",
    "mimalloc": "apt-get install libmimalloc2.0 (Debian/Ubuntu), or conda install mimalloc",
}
_RELAUNCHED = "FASTVITS_ALLOCATOR_RELAUNCHED"


class AllocatorNotFound(RuntimeError):
    """The allocator library asked for is not installed where it is looked for."""


def _search_dirs() -> list[Path]:
    prefixes = [sys.prefix, os.environ.get("CONDA_PREFIX", "")]
    system = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"]
    return [Path(p, "lib") for p in prefixes if p] + [Path(d) for d in system]


def current_allocator() -> str:
    """The allocator of this process: a preloaded tcmalloc / jemalloc / mimalloc, else glibc's malloc with any
    `MALLOC_*` tuning from the environment ("unknown" where /proc/self/maps cannot be read)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in ALLOCATORS:
        if f"lib{name}" in maps:
            return name
    tuning = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    return "glibc malloc" + (f" ({tuning})" if tuning else "")


def find_allocator(spec: str) -> tuple[str, Path]:
    """(name, library path) for "tcmalloc", "jemalloc", "mimalloc" or the path of one of their libraries."""
    if spec not in ALLOCATORS:
        path = Path(spec)
        if path.name == spec and not path.exists():
            raise AllocatorNotFound(
                f"--allocator must be one of {', '.join(ALLOCATORS)} or a library path, got {spec!r}"
            )
        name = next((n for n in ALLOCATORS if f"lib{n}" in path.name), None)
        if name is None or not path.is_file():
            raise AllocatorNotFound(
                f"--allocator {spec}: not a tcmalloc, jemalloc or mimalloc library file (lib<name>*.so*)"
            )
        return name, path.resolve()
    directories = _search_dirs()
    for directory in directories:
        for file in ALLOCATORS[spec]:
            if (directory / file).is_file():
                return spec, directory / file
    looked = ", ".join(str(d) for d in directories)
    raise AllocatorNotFound(
        f"--allocator {spec}: none of {', '.join(ALLOCATORS[spec])} found in {looked}. Install it ({_INSTALL[spec]}), "
        "or pass the library's path: --allocator /path/to/lib.so"
    )


def relaunch_with_allocator(spec: str, argv: list[str]) -> None:
    """Run `fastvits ARGV` again with allocator `spec` preloaded, replacing this process; return at once if it is
    already the allocator in use."""
    name, path = find_allocator(spec)
    if current_allocator() == name:
        return
    if not sys.platform.startswith("linux"):
        raise AllocatorNotFound(f"--allocator preloads the library with LD_PRELOAD, which needs Linux ({sys.platform})")
    if os.environ.get(_RELAUNCHED):
        raise AllocatorNotFound(f"--allocator {spec}: {path} was preloaded but is not in use; is it a {name} library?")
    preload = " ".join(p for p in (str(path), os.environ.get("LD_PRELOAD", "")) if p)
    env = {**os.environ, "LD_PRELOAD": preload, _RELAUNCHED: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastvits.cli", *argv], env)
