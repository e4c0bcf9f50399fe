"""Run metrics on disk: the loss of every optimizer step and a summary row per epoch.

* `steps.csv` is appended as training goes (a line per step, flushed), so a crash loses nothing before it;
  on resume the steps after the checkpoint are dropped, since they will be trained again.
* `metrics.csv` and `metrics.json` (timm's column names: epoch, train_loss, eval_loss, eval_top1,
  eval_top5, lr) are rewritten atomically at the end of each epoch, with `loss.png` and `accuracy.png`.

Only rank 0 writes (`enabled`); the other ranks keep the same rows in memory and do nothing else.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .engine import StepResult
from .files import atomic_write_csv, atomic_write_json, atomic_write_text
from .plots import plot_run

__all__ = ["STEP_FIELDS", "MetricsLog", "read_steps"]

STEP_FIELDS = ("global_step", "epoch", "step_in_epoch", "loss", "lr")
_INT_FIELDS = ("global_step", "epoch", "step_in_epoch")
STEPS_FILE, CSV_FILE, JSON_FILE = "steps.csv", "metrics.csv", "metrics.json"


def read_steps(path: Path) -> list[dict[str, float]]:
    """Rows of a steps.csv; a last line cut short by a killed process is skipped."""
    if not path.is_file():
        return []
    rows = []
    for row in csv.DictReader(path.read_text().splitlines()):
        try:
            rows.append({k: (int if k in _INT_FIELDS else float)(row[k]) for k in STEP_FIELDS})
        except (TypeError, ValueError, KeyError):
            continue
    return rows


def _step_line(row: dict[str, float]) -> str:
    """One steps.csv line; the same format for appended and rewritten rows keeps a resumed file uniform."""
    return ",".join(f"{row[k]:.10g}" for k in STEP_FIELDS) + "\n"


class MetricsLog:
    """Step and epoch metrics of one run folder.

    Args:
        folder: the run's output folder.
        enabled: write files (rank 0 only).
        resume_step: when resuming, the global step of the checkpoint: later steps and epochs are forgotten.
    """

    def __init__(self, folder: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.folder, self.enabled = folder, enabled
        self.steps: list[dict[str, float]] = []
        self.epochs: list[dict[str, Any]] = []
        if resume_step is not None:
            self.steps = [r for r in read_steps(folder / STEPS_FILE) if r["global_step"] <= resume_step]
            if (folder / JSON_FILE).is_file():
                old = json.loads((folder / JSON_FILE).read_text())["epochs"]
                self.epochs = [r for r in old if r["global_step"] <= resume_step]
        if enabled:
            atomic_write_text(folder / STEPS_FILE, ",".join(STEP_FIELDS) + "\n" + "".join(map(_step_line, self.steps)))
            self._steps_file = open(folder / STEPS_FILE, "a", buffering=1)  # line-buffered appends

    def log_step(self, result: StepResult) -> None:
        # loss and lr kept as steps.csv gives them back, so an epoch's mean train loss is the same number whether
        # or not a resume read part of the epoch from the file
        row = {"global_step": result.global_step, "epoch": result.epoch, "step_in_epoch": result.step_in_epoch,
               "loss": float(f"{result.loss:.10g}"), "lr": float(f"{result.lr:.10g}")}
        self.steps.append(row)
        if self.enabled:
            self._steps_file.write(_step_line(row))

    def epoch_train_loss(self, epoch: int) -> float:
        """Mean step loss of `epoch` (steps before a resume included)."""
        losses = [r["loss"] for r in self.steps if r["epoch"] == epoch]
        return sum(losses) / len(losses) if losses else math.nan

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Add an epoch row; rewrite metrics.csv, metrics.json and the plots."""
        self.epochs.append(row)
        if not self.enabled:
            return
        fields = list(dict.fromkeys(k for r in self.epochs for k in r))
        atomic_write_csv(self.folder / CSV_FILE, self.epochs, fields)
        best = max(self.epochs, key=lambda r: max(r.get("eval_top1", -1.0), r.get("ema_eval_top1", -1.0)))
        atomic_write_json(self.folder / JSON_FILE, {"epochs": self.epochs, "best": best})
        plot_run(self.steps, self.epochs, self.folder)

    def close(self) -> None:
        if self.enabled:
            self._steps_file.close()
