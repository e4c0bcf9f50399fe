"""Training checkpoints: atomic, verified, and refusing damaged files with a clear error."""

import random

import numpy as np
import pytest
import torch

from fastvits.train.checkpoint import (
    capture_rng,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from fastvits.train.errors import CheckpointError
from fastvits.train.files import atomic_write_text, remove_stale_temporaries


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "progress": {"epoch": 1, "step_in_epoch": 3},
            "rng": [capture_rng()], "lr": [1e-3, (0.9, 0.999)], "ema": None}


def test_round_trip_and_weights_only(tmp_path):
    path = checkpoint_path(tmp_path, 12)
    save_checkpoint(path, _state(1.5))
    assert path.name == "step-00000012.pt" and list(tmp_path.iterdir()) == [path]  # no temporary left
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.full((64, 64), 1.5)) and state["lr"] == [1e-3, (0.9, 0.999)]
    torch.load(path, weights_only=True)  # no pickled code, plain torch.load works too


def test_rng_states_restore_every_stream():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    state = capture_rng()
    draws = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    torch.rand(10), np.random.rand(10), random.random()
    restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2:] == again[2:]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_is_refused_and_previous_loads(tmp_path, damage):
    previous, latest = checkpoint_path(tmp_path, 10), checkpoint_path(tmp_path, 20)
    save_checkpoint(previous, _state(1.0))
    save_checkpoint(latest, _state(2.0))
    data = bytearray(latest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # one flipped byte inside the tensor data: the zip container itself does not notice
        offset = bytes(data).index(np.full(64, 2.0, dtype=np.float32).tobytes()) + 100
        data[offset] ^= 0x40
    latest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{latest}.*corrupt or truncated.*--resume {previous}"):
        load_checkpoint(latest)
    assert torch.equal(load_checkpoint(previous)["model"]["w"], torch.full((64, 64), 1.0))


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a fastvits training checkpoint") as refused:
        load_checkpoint(path)
    assert "pass them with --checkpoint instead" in str(refused.value)  # the flag of `fastvits train` for weights


def test_prune_keeps_newest_and_stale_temporaries_go(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010.pt", "step-00000015.pt"]
    (tmp_path / "step-00000020.pt.tmp-999").write_bytes(b"half a checkpoint")  # a write killed mid-way
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == ["step-00000020.pt.tmp-999"]
    atomic_write_text(tmp_path / "a.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "step-00000010.pt", "step-00000015.pt"]
