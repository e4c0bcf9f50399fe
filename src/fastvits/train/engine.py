"""The inner loops: one training epoch, and evaluation. Setup and bookkeeping live in `trainer.py`.

A training step is `accum_steps` micro-batches (DDP synchronises gradients only on the last one), gradient
clipping, a finiteness check of the loss agreed by all ranks, the optimizer step, the per-step scheduler
update and the EMA update. The check comes before the optimizer step, so weights never absorb a NaN.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..progress import progress as progress_display
from .distributed import all_reduce_sum, world_size
from .errors import DivergenceError

__all__ = ["StepResult", "TrainParts", "current_lr", "evaluate", "train_one_epoch"]


@dataclass
class TrainParts:
    """The objects a training step touches.

    Attributes:
        model: the bare model (optimizer, EMA and checkpoints refer to its parameters).
        forward_model: what runs the forward pass: `model` itself, or wrapped by DDP and/or torch.compile.
        ddp: the DDP wrapper when distributed (its `no_sync` skips gradient all-reduces while accumulating).
        autocast_dtype: bf16/fp16 mixed precision, or None for float32.
        accum_steps: micro-batches per optimizer step.
        clip_grad: maximum gradient norm, or None.
        mixup: timm `Mixup` (batch -> mixed batch and soft targets), or None.
    """

    model: nn.Module
    forward_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    device: torch.device
    ddp: nn.parallel.DistributedDataParallel | None = None
    ema: Any = None
    mixup: Any = None
    autocast_dtype: torch.dtype | None = None
    accum_steps: int = 1
    clip_grad: float | None = None
    channels_last: bool = False


@dataclass(frozen=True)
class StepResult:
    """What the trainer learns after each optimizer step."""

    epoch: int
    step_in_epoch: int
    global_step: int
    loss: float  # mean over all micro-batches and ranks of this step
    lr: float


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _bar(iterable: Iterable, desc: str, enabled: bool) -> Any:
    """`fastvits.progress.progress`: a bar on a terminal, a log line every 30 s in a file, nothing if not enabled."""
    return progress_display(iterable, desc=desc, enabled=enabled)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The base learning rate: the largest of the groups, since layer-wise decay only scales groups down."""
    return max(group["lr"] for group in optimizer.param_groups)


def train_one_epoch(parts: TrainParts, loader: Iterable, epoch: int, start_step: int, global_step: int,
                    after_step: Callable[[StepResult], None], progress: bool = False) -> int:
    """Run the rest of one epoch from optimizer step `start_step`; returns the new global step count.

    Raises:
        DivergenceError: the loss became NaN or infinite on any rank (detected before the optimizer step).
    """
    parts.forward_model.train()
    bar = _bar(loader, f"train {epoch}", progress)
    step, micro, loss_sum = start_step, 0, torch.zeros((), device=parts.device)
    for x, y in bar:
        x, y = _to_device(x, y, parts.device, parts.channels_last)
        if parts.mixup is not None:
            x, y = parts.mixup(x, y)
        micro += 1
        sync = micro == parts.accum_steps
        with parts.ddp.no_sync() if parts.ddp is not None and not sync else contextlib.nullcontext():
            with _autocast(parts.device, parts.autocast_dtype):
                loss = parts.loss_fn(parts.forward_model(x), y)
            parts.scaler.scale(loss / parts.accum_steps).backward()
        loss_sum += loss.detach().float()
        if not sync:
            continue
        parts.scaler.unscale_(parts.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.clip_grad or math.inf)
        # fp16's scaler skips steps with overflowing gradients by itself; otherwise they mean divergence
        grad_bad = ~torch.isfinite(grad_norm) & (not parts.scaler.is_enabled())
        flags = torch.stack([loss_sum / parts.accum_steps, ~torch.isfinite(loss_sum), grad_bad]).float()
        summed = all_reduce_sum(flags).tolist()  # (loss, ranks with a non-finite loss, ranks with bad gradients)
        mean_loss = summed[0] / world_size()
        if summed[1] or summed[2]:
            what = f"the loss became {mean_loss}" if summed[1] else "the gradient norm became non-finite"
            raise DivergenceError(f"{what} at epoch {epoch}, step {step + 1} of the epoch (global step "
                                  f"{global_step + 1})")
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.optimizer.zero_grad(set_to_none=True)
        step, global_step, micro = step + 1, global_step + 1, 0
        loss_sum = torch.zeros((), device=parts.device)
        parts.scheduler.step_update(num_updates=global_step)
        if parts.ema is not None:
            parts.ema.update(parts.model, step=global_step)
        lr = current_lr(parts.optimizer)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        after_step(StepResult(epoch, step, global_step, mean_loss, lr))
    return global_step


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, autocast_dtype: torch.dtype | None = None,
             channels_last: bool = False, progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) over the whole dataset, summed across ranks, and throughput.

    Returns:
        loss, top1, top5, samples, and samples_per_sec: images per second of the forward passes alone
        (data loading excluded), so it measures the model.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, samples
    model_seconds = 0.0
    for x, y in _bar(loader, desc, progress):
        x, y = _to_device(x, y, device, channels_last)
        start = time.perf_counter()
        with _autocast(device, autocast_dtype):
            logits = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_seconds += time.perf_counter() - start
        logits = logits.float()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices.eq(y[:, None])  # (B, k)
        totals += torch.stack([
            nn.functional.cross_entropy(logits, y, reduction="sum").double(),
            hits[:, 0].sum().double(), hits.any(dim=1).sum().double(), torch.tensor(len(y), device=device).double(),
        ])
    time_and_totals = all_reduce_sum(torch.cat([totals, torch.tensor([model_seconds], device=device).double()]))
    loss_sum, top1, top5, samples, seconds = time_and_totals.tolist()
    samples = max(samples, 1.0)
    return {
        "loss": loss_sum / samples, "top1": 100.0 * top1 / samples, "top5": 100.0 * top5 / samples,
        "samples": int(samples), "samples_per_sec": samples / max(seconds / world_size(), 1e-9),
    }
