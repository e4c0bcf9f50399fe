"""Process-group setup and the few collectives the training loop needs.

`torchrun` describes the job through environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...);
a plain `python -m fastvits.cli train` has none of them and runs as a world of one without a process group,
so every helper here works in both cases and the rest of the package never checks which one it is in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import TrainError

__all__ = [
    "DistInfo", "all_gather_objects", "all_reduce_sum", "barrier", "cleanup", "init_distributed", "kept_num_threads",
    "share_cpus", "unused_parameters", "world_size",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 is the only process that writes files or shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the `torchrun` process group if there is one (NCCL on GPU, gloo on CPU) and pick the device.

    Args:
        device: "auto" (the local GPU if any, else CPU), "cpu", or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise TrainError("--device cuda was given but PyTorch sees no CUDA device; use --device cpu (or auto)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def share_cpus(world_size: int, workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """Split this machine's cores among the processes, their data-loading workers and compute threads.

    Oversubscription is far worse than idling: every parallel operator waits for its slowest OpenMP thread, so a
    thread that has to wait for a core (taken by a data worker or another process) can make training several
    times slower (measured 8x on a busy 2-core machine). Each process gets cores // world_size cores; by default
    up to 4 of them, but never the last one, load data, and the rest compute.

    Returns:
        (workers, threads); the thread count is applied with `torch.set_num_threads`.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = max(1, cores // world_size)
    workers = min(4, per_process - 1) if workers is None else workers
    threads = max(1, per_process - workers) if threads is None else threads
    torch.set_num_threads(threads)
    return workers, threads


@contextlib.contextmanager
def kept_num_threads() -> Iterator[None]:
    """Give torch's thread count back afterwards (a context manager or a decorator): `share_cpus` sets it for a
    command's CPU share, and a command run in-process (a notebook, a test, another tool) must not leave it changed
    for the caller."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def unused_parameters(model: nn.Module, input_size: tuple[int, ...], device: torch.device) -> list[str]:
    """Names of the trainable parameters that get no gradient from a training forward and backward pass.

    Some models leave parameters out of the graph at some input sizes: FasterViT's carrier-token attention
    (`hat_*`) when a stage holds a single window, e.g. stage 3 at 32x32 px. DDP then stops in the second step
    unless it looks for unused parameters (`find_unused_parameters=True`), which costs a walk over the autograd
    graph every step, so the trainer asks for it only when this probe finds some. The graph is fixed by the input
    size (training crops all have one), not by the data, so one pass on random data of batch 2 (BatchNorm needs
    more than one value per channel) answers it. It leaves the run untouched: the RNG streams are forked, buffers
    such as BatchNorm statistics restored and the gradients cleared.

    Args:
        model: the bare model, on `device`.
        input_size: (C, H, W) of one training image.
    """
    saved = [b.detach().clone() for b in model.buffers()]
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        model.train()
        model(torch.randn(2, *input_size, device=device)).float().sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved, strict=True):
            buffer.copy_(value)
    return unused


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op in a world of one). Returns the summed tensor."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """Collect one picklable object from every process, in rank order (a list of one without a group)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Wait for all processes, e.g. so no rank reads a file before rank 0 has written it."""
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group so `torchrun` sees a clean exit."""
    if dist.is_initialized():
        dist.destroy_process_group()
