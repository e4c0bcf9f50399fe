"""Process-wide on/off switches for the fast paths, each with an environment default and a context manager."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Switch"]


class Switch:
    """A global flag: on unless the environment variable `env` is "0"; `with switch(False): ...` flips it locally."""

    def __init__(self, env: str) -> None:
        self.enabled = os.environ.get(env, "1") != "0"

    def set(self, enable: bool) -> None:
        self.enabled = bool(enable)

    @contextmanager
    def __call__(self, enable: bool) -> Iterator[None]:
        previous = self.enabled
        self.enabled = bool(enable)
        try:
            yield
        finally:
            self.enabled = previous
