"""Reading, converting, validating and writing checkpoints.

One path for every file: official `.pth` / `.pth.tar` pickles (read with `weights_only=True`) and
safetensors. Containers (`state_dict`, `model`, `state_dict_ema`) are unwrapped and DDP prefixes
stripped; a per-family filter converts official key layouts (registered with
`register_checkpoint_filter`); the result must then match the model exactly, or the load is refused
with the missing, unexpected and mis-shaped keys listed. The only tolerated difference is the
classifier when the model was built with another `num_classes` (fine-tuning).
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from .errors import UserError

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "read_state_dict",
    "register_checkpoint_filter",
    "save_safetensors",
]

_logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
FilterFn = Callable[[StateDict, nn.Module], StateDict]
_FILTERS: dict[type, FilterFn] = {}
_CONTAINER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says why and what to do."""


def register_checkpoint_filter(model_cls: type) -> Callable[[FilterFn], FilterFn]:
    """Register `fn(state_dict, model) -> state_dict` converting official checkpoints for `model_cls`."""

    def wrap(fn: FilterFn) -> FilterFn:
        _FILTERS[model_cls] = fn
        return fn

    return wrap


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} stores Python objects besides tensors (for example the training arguments), which "
            f"torch.load(weights_only=True) refuses to unpickle: {e}. If you trust the file, extract the "
            "weights once with `sd = torch.load(path, weights_only=False)['state_dict']` and save them with "
            "`fastvits.checkpoint.save_safetensors(sd, 'weights.safetensors')`, then load that file."
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {e}). "
            "Download or copy it again and compare its size or checksum with the source."
        ) from e


def _read_safetensors(path: Path) -> StateDict:
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt: {e}). "
            "Download or copy it again and compare its size or checksum with the source."
        ) from e


def _unwrap(obj: object, path: Path, use_ema: bool) -> Mapping[str, object]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    keys = ("state_dict_ema", "model_ema") + _CONTAINER_KEYS if use_ema else _CONTAINER_KEYS
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    if use_ema:
        raise CheckpointError(f"{path} has no EMA weights (state_dict_ema / model_ema); load without use_ema")
    return obj


def _strip_prefixes(sd: Mapping[str, object]) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    if out and sorted(out)[0].startswith("encoder."):
        out = {k.removeprefix("encoder."): v for k, v in out.items()}
    return out


def read_state_dict(path: str | os.PathLike, use_ema: bool = False) -> StateDict:
    """Read a checkpoint file (safetensors or PyTorch pickle) into a flat {name: tensor} dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        raw: object = _read_safetensors(path)
    else:
        raw = _torch_load(path)
    sd = _strip_prefixes(_unwrap(raw, path, use_ema))
    if not sd:
        raise CheckpointError(f"{path} contains no tensors")
    return sd


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "head"
    return (names,) if isinstance(names, str) else tuple(names)


def _compare(sd: StateDict, expected: StateDict) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    return missing, unexpected, mismatched


def _drop_new_head(sd: StateDict, expected: StateDict, model: nn.Module) -> StateDict:
    """Drop the checkpoint's classifier when the model was built for another number of classes."""
    for name in _classifier_names(model):
        w = f"{name}.weight"
        if w in sd and (w not in expected or sd[w].shape != expected[w].shape):
            _logger.info("checkpoint classifier %s %s does not fit the model: new head kept", w, tuple(sd[w].shape))
            sd = {k: v for k, v in sd.items() if not k.startswith(f"{name}.")}
    return sd


def _format_list(title: str, items: list[str], limit: int = 12) -> str:
    if not items:
        return ""
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    {shown}{more}"


def convert_state_dict(sd: StateDict, model: nn.Module, strict: bool = True) -> StateDict:
    """Convert a raw state dict to the model's layout and check it fits (see module docstring)."""
    for cls in type(model).__mro__:
        if cls in _FILTERS:
            sd = _FILTERS[cls](sd, model)
            break
    expected = model.state_dict()
    sd = _drop_new_head(sd, expected, model)
    missing, unexpected, mismatched = _compare(sd, expected)
    classifier = tuple(f"{n}." for n in _classifier_names(model))
    missing_body = [k for k in missing if not k.startswith(classifier)]
    if strict and (missing_body or unexpected or mismatched):
        raise CheckpointError(
            f"checkpoint does not fit {type(model).__name__}"
            + _format_list("missing in checkpoint", missing_body)
            + _format_list("unexpected in checkpoint", unexpected)
            + _format_list("shape mismatch", mismatched)
            + "\n  The checkpoint was most likely saved from another variant or configuration: create the model "
            "whose name and arguments match the checkpoint (see fastvits.list_models())."
        )
    return sd


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, strict: bool = True, use_ema: bool = False
) -> nn.Module:
    """Load official or fastvits weights into `model` strictly (see module docstring); returns the model."""
    sd = convert_state_dict(read_state_dict(path, use_ema), model, strict)
    model.load_state_dict(sd, strict=False)
    return model


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors atomically (a temporary file in the same folder, then a rename).

    Tensors sharing storage (tied weights) are cloned, since safetensors refuses shared storage.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owners = Counter(v.untyped_storage().data_ptr() for v in state_dict.values())
    tensors = {
        k: (v.detach().clone() if owners[v.untyped_storage().data_ptr()] > 1 else v.detach()).contiguous()
        for k, v in state_dict.items()
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
