"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

The data goes to a temporary file in the same folder, is flushed to disk, and then renamed over the target;
a rename within one file system is atomic on POSIX and Windows. A process killed mid-write leaves only a
`*.tmp-<pid>` file behind, which `remove_stale_temporaries` clears on the next start.

Commands check their output locations first (`require_writable_folder`, `require_writable_file`), so a path that
cannot be written fails at once with the flag named, not as a traceback after minutes of work.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import TrainError

__all__ = [
    "atomic_write_bytes", "atomic_write_csv", "atomic_write_json", "atomic_write_text", "remove_stale_temporaries",
    "require_writable_file", "require_writable_folder",
]

_TMP_MARK = ".tmp-"


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write `data` to `path` atomically, creating parent folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Write rows as CSV with a header of `fields`; keys missing in a row are left empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def require_writable_folder(folder: str | os.PathLike, flag: str) -> None:
    """Create `folder` if needed and write (and delete) a file in it.

    Raises:
        TrainError: it cannot be created or written (a path under a file, a read-only or virtual file system).
    """
    _require_writable(Path(folder), f"{flag} {folder}")


def require_writable_file(path: str | os.PathLike, flag: str) -> None:
    """Check that the file `path` can be written (its folder is created if needed); see `require_writable_folder`."""
    if Path(path).is_dir():
        raise TrainError(f"{flag} {path} is a folder; give a file name in it")
    _require_writable(Path(path).parent, f"{flag} {path}")


def _require_writable(folder: Path, named: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file" if blocker is not None else e.strerror or str(e)
        raise TrainError(f"{named}: cannot write files in {folder} ({reason}); choose a path you can write to") from e


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of writes that were killed half-way. Returns what was removed."""
    stale = [p for p in Path(folder).glob(f"*{_TMP_MARK}*") if p.is_file()] if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open folders and needs no such step."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
