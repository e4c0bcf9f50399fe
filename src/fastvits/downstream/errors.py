"""Errors of `fastvits detect|segment|make-data`, all `fastvits.errors.UserError`s: the command line prints them as
one line and exits with status 2.

Each also derives from the built-in type that fits it, so Python callers, and code written when these were plain
`ValueError`s and `FileNotFoundError`s, can keep catching the built-in type.
"""

from __future__ import annotations

from ..errors import UserError

__all__ = ["DownstreamDataError", "DownstreamError", "DownstreamSettingsError", "MissingFileError", "RunExistsError"]


class DownstreamError(UserError):
    """Base class: a problem with the user's data, files or settings, not a bug in fastvits."""


class DownstreamDataError(DownstreamError, ValueError):
    """Annotations, masks, images or a run's files that are malformed, inconsistent, or do not fit the model."""


class DownstreamSettingsError(DownstreamError, ValueError):
    """Settings that cannot work: an unknown backbone, conflicting options, a detector the data cannot train."""


class MissingFileError(DownstreamError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class RunExistsError(DownstreamError, FileExistsError):
    """`train` was pointed at a folder that already holds a run."""
