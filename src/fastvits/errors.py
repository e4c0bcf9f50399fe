"""The package-wide base class of errors that the user can fix.

A `UserError` is a problem with the user's input (data, files, settings, checkpoints), not a bug in fastvits: its
message names what is wrong and what to do about it. The `fastvits` command line prints it as one line on stderr and
exits with status 2 (the convention for "the input is wrong"), leaving tracebacks for real bugs. Subclasses keep the
built-in exception type that fits them (`CheckpointError` is also a `RuntimeError`, ...), so Python callers can
catch either.
"""

from __future__ import annotations

import re

__all__ = ["UserError", "unexpected_keyword"]


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


def unexpected_keyword(error: TypeError) -> str | None:
    """The argument name of a "got an unexpected keyword argument 'x'" TypeError (a constructor called with a
    setting it does not have: a typo in --model-kwargs), or None for any other TypeError (a bug)."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    return None if found is None else found.group(1)
