"""PNG plots of training curves (matplotlib's Agg backend: no display needed).

`plot_run` draws one run (loss per step and per epoch, accuracy per epoch); `plot_comparison` puts the
test accuracy of several runs side by side, against epochs and against training minutes, which is the
fair axis when models differ in speed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen before pyplot is imported
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["plot_comparison", "plot_run"]

Rows = Sequence[Mapping[str, Any]]


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average, so the per-step loss trend is readable."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_run(steps: Rows, epochs: Rows, folder: Path) -> None:
    """Write loss.png (x: optimizer step) and accuracy.png (x: epoch) for one run into `folder`."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        x = [r["global_step"] for r in steps]
        losses = [r["loss"] for r in steps]
        ax.plot(x, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss (step, as optimised)")
        ax.plot(x, _smooth(losses, max(len(losses) // 25, 1)), color="tab:blue", label="train loss (smoothed)")
    for key, style in (("eval_loss", "o-"), ("ema_eval_loss", "s--")):
        rows = [r for r in epochs if key in r]
        if rows:
            ax.plot([r["global_step"] for r in rows], [r[key] for r in rows], style, label=key.replace("_", " "))
    ax.set(xlabel="optimizer step", ylabel="cross-entropy", title="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("eval_top1", "o-"), ("eval_top5", "^-"), ("ema_eval_top1", "s--")):
        rows = [r for r in epochs if key in r]
        if rows:
            ax.plot([r["epoch"] + 1 for r in rows], [r[key] for r in rows], style, label=key.replace("_", " "))
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="evaluation accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=110)
    plt.close(fig)


def plot_comparison(runs: Mapping[str, Rows], path: Path, title: str = "test top-1 accuracy") -> None:
    """Top-1 of several runs (label -> epoch rows) against epoch and against cumulative training minutes."""
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, rows in runs.items():
        top1 = [r["eval_top1"] for r in rows]
        minutes, total = [], 0.0
        for r in rows:
            total += r["epoch_seconds"] / 60
            minutes.append(total)
        by_epoch.plot([r["epoch"] + 1 for r in rows], top1, "o-", label=label)
        by_time.plot(minutes, top1, "o-", label=label)
    by_epoch.set(xlabel="epoch", ylabel="top-1 (%)")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set(xlabel="training time (minutes)")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_epoch.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
