"""Progress of long loops: a tqdm bar on a terminal, a periodic log line in a file or a pipe.

tqdm redraws its bar with carriage returns, which a log file keeps: a 16-epoch `fastvits segment train` wrote a
multi-megabyte log. Where stderr is not a terminal, `progress` prints one plain line every `interval` seconds and
one at the end instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

__all__ = ["PeriodicLog", "progress"]


class PeriodicLog:
    """The part of tqdm's interface that fastvits uses (iteration, `update`, `set_postfix`, `close`), written as a
    line such as `train: 120/1000 (12%) 34 s, epoch=0, loss=0.4312` at most every `interval` seconds."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, interval: float) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.interval = desc, interval
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = "".join(f", {k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def close(self) -> None:
        if self.n:
            self._line(time.monotonic())
            self.n = 0  # a second close writes nothing

    def _line(self, now: float) -> None:
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        print(f"{self.desc}: {done} {now - self.start:.0f} s{self.postfix}", file=sys.stderr, flush=True)


def progress(
    iterable: Iterable | None = None, *, total: int | None = None, desc: str, enabled: bool = True,
    interval: float = 30.0,
) -> tqdm | PeriodicLog:
    """A progress display for a loop over `iterable` (or `total` manual `update()`s): tqdm on a terminal, a
    `PeriodicLog` elsewhere, nothing when not `enabled`."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return PeriodicLog(iterable, total, desc, interval)
