"""Errors of the training commands, all `fastvits.errors.UserError`s: the command line prints them as one line
and exits with status 2. Checkpoint problems use the package-wide `fastvits.checkpoint.CheckpointError`,
re-exported here so the training code has one place to import its errors from.
"""

from __future__ import annotations

from ..checkpoint import CheckpointError
from ..errors import UserError

__all__ = ["CheckpointError", "DataError", "DivergenceError", "TrainError"]

_WORKER_MARK = "Original Traceback (most recent call last):"


class TrainError(UserError):
    """Base class: a problem with the user's data, checkpoints or settings, not a bug in fastvits."""


class DataError(TrainError):
    """A dataset is missing, empty, or holds a file that cannot be decoded.

    An error raised in a DataLoader worker process reaches the main process re-created from one string: "Caught
    DataError in DataLoader worker process N", the worker's whole traceback, and only then the message (torch's
    `ExceptionWrapper.reraise`). The constructor keeps just the message, so the command line still prints the one
    line that names the file and the fix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(self._without_worker_traceback(message))

    @classmethod
    def _without_worker_traceback(cls, message: str) -> str:
        if _WORKER_MARK not in message:
            return message
        # the traceback ends with the original exception as "module.Class: message" (after any chained causes)
        _, sep, original = message.rpartition(f"{cls.__module__}.{cls.__qualname__}: ")
        return original.strip() if sep else message


class DivergenceError(TrainError):
    """The training loss became NaN or infinite; the last good checkpoint is left untouched."""
