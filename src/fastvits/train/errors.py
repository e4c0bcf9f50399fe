"""Errors that the training commands report to the user as one clear message instead of a traceback.

Each names what went wrong and what to do about it; `fastvits train|validate|predict` print the message
and exit with status 2 (the convention for "the input is wrong"), leaving tracebacks for real bugs.
Checkpoint problems use the package-wide `fastvits.checkpoint.CheckpointError`, re-exported here so the
training code has one place to import its errors from.
"""

from __future__ import annotations

from ..checkpoint import CheckpointError

__all__ = ["CheckpointError", "DataError", "DivergenceError", "TrainError"]


class TrainError(Exception):
    """Base class: a problem with the user's data, checkpoints or settings, not a bug in fastvits."""


class DataError(TrainError):
    """A dataset is missing, empty, or holds a file that cannot be decoded."""


class DivergenceError(TrainError):
    """The training loss became NaN or infinite; the last good checkpoint is left untouched."""
