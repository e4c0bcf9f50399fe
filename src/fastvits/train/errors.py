"""Errors of the training commands, all `fastvits.errors.UserError`s: the command line prints them as one line
and exits with status 2. Checkpoint problems use the package-wide `fastvits.checkpoint.CheckpointError`,
re-exported here so the training code has one place to import its errors from.
"""

from __future__ import annotations

from ..checkpoint import CheckpointError
from ..errors import UserError

__all__ = ["CheckpointError", "DataError", "DivergenceError", "TrainError"]


class TrainError(UserError):
    """Base class: a problem with the user's data, checkpoints or settings, not a bug in fastvits."""


class DataError(TrainError):
    """A dataset is missing, empty, or holds a file that cannot be decoded."""


class DivergenceError(TrainError):
    """The training loss became NaN or infinite; the last good checkpoint is left untouched."""
