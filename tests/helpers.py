"""Shared test helpers: parity fixtures generated from the official code."""

import json
from pathlib import Path

import safetensors.torch
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(family: str, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(json metadata, tensors) of a parity fixture generated from the official code."""
    meta = json.loads((FIXTURES / family / f"{name}.json").read_text())
    return meta, safetensors.torch.load_file(str(FIXTURES / family / f"{name}.safetensors"))


def fixture_checkpoint(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """Write the fixture's official state dict as a standalone checkpoint file, as users would have it."""
    sd = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    safetensors.torch.save_file(sd, str(path))
    return path
