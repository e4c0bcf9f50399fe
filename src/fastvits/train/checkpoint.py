"""Training checkpoints: everything needed to continue a run exactly.

A training checkpoint is a `torch.save` dict of tensors and plain Python values only (RNG states are stored
as tensors), so it loads with `torch.load(weights_only=True)` and never unpickles code. It carries a SHA-256
digest of its own content: the zip container of `torch.save` notices truncation but not a flipped byte
inside tensor data, and resuming from silently damaged weights is worse than refusing to resume.

Files are written atomically (see `files.py`) and named by optimizer step, `step-00001234.pt`, so the
newest is found by name and the previous ones stay loadable until pruned. Model weights for users are
exported separately as safetensors by `fastvits.checkpoint.save_safetensors`.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .files import atomic_write_bytes

__all__ = [
    "capture_rng", "checkpoint_path", "list_checkpoints", "load_checkpoint", "prune_checkpoints", "restore_rng",
    "save_checkpoint",
]

FORMAT = "fastvits-train-checkpoint"
VERSION = 2  # 2: "run" holds the settings a resume must repeat (see resume.py)
READABLE_VERSIONS = (1, 2)  # 1: the same state; its "run" names the model only, so only the model is checked
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(folder: Path, global_step: int) -> Path:
    return folder / f"step-{global_step:08d}.pt"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, oldest first (by step number in the name)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (at least one is always kept)."""
    for old in list_checkpoints(folder)[: -max(keep, 1)]:
        old.unlink(missing_ok=True)


def _digest(state: dict[str, Any]) -> str:
    """SHA-256 over every value of a nested checkpoint dict, in order, tensors by their raw bytes."""
    h = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}:".encode())
            for key, value in obj.items():
                h.update(f"{key!r}=".encode())
                visit(value)
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}:".encode())
            for value in obj:
                visit(value)
        else:
            h.update(f"{type(obj).__name__}:{obj!r};".encode())

    visit(state)
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically, stamped with format, version and content digest."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    payload["digest"] = _digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify a training checkpoint.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not a fastvits training checkpoint; the
            message names the file and the previous checkpoint beside it, if any.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError... for damaged files
        raise CheckpointError(_damaged(path, f"it cannot be read ({type(e).__name__}: {str(e)[:160]})")) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastvits training checkpoint: --resume takes a checkpoints/step-*.pt "
                              "file of a `fastvits train` run; to start a new run from model weights, pass them "
                              "with --checkpoint instead")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this fastvits reads "
                              f"versions {', '.join(map(str, READABLE_VERSIONS))}; resume it with the fastvits "
                              "release that wrote it")
    expected = state.pop("digest", None)
    if expected != _digest(state):
        raise CheckpointError(_damaged(path, "its content does not match its digest"))
    return state


def _damaged(path: Path, reason: str) -> str:
    older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    fix = (f"resume from the previous checkpoint with --resume {older[-1]}" if older
           else "no earlier checkpoint is available; start the run again")
    return f"checkpoint {path} is corrupt or truncated: {reason}. Delete it and {fix}."


def capture_rng() -> dict[str, Any]:
    """The state of every global RNG the training loop draws from, as tensors and plain numbers."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
