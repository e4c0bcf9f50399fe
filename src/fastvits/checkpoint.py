"""Reading, converting, validating and writing checkpoints.

One path for every file: official `.pth` / `.pth.tar` pickles (read with `weights_only=True`) and
safetensors. Containers (`state_dict`, `model`, `state_dict_ema`) are unwrapped and DDP prefixes
stripped; a per-family filter converts official key layouts (registered with
`register_checkpoint_filter`); the result must then match the model exactly, or the load is refused
with the missing, unexpected and mis-shaped keys listed (`strict=False` tolerates missing and unexpected keys,
never a mis-shaped tensor). Two differences are tolerated: the classifier when the model was built with another
`num_classes` (fine-tuning; a checkpoint without a classifier leaves it at its initialisation, with a warning), and
an input conv of another channel count (`in_chans`), adapted as timm adapts its own pretrained weights. Files are
recognised by content as well as by suffix (a safetensors file named `.pth` loads; a web page saved as `.pth` is
named as such).
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
from timm.models import adapt_input_conv as timm_adapt_input_conv

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


def _file_format(path: Path) -> str | None:
    """"safetensors", "torch" (a zip archive or a legacy pickle, as `torch.save` writes) or None, from the first bytes:
    a safetensors file starts with its JSON header's length (8 bytes, little-endian), then the header's `{`."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    return None


def _not_a_checkpoint(path: Path) -> CheckpointError:
    with open(path, "rb") as f:
        start = f.read(64).lstrip()
    if not start:
        what = "it is empty"
    elif start[:1] == b"<":
        what = "it is an HTML page (a failed download?)"
    else:
        what = f"its first bytes are {start[:16]!r}"
    return CheckpointError(
        f"{path} is not a PyTorch checkpoint or safetensors file: {what}. Download or copy the weights again, "
        "or point to the .pth/.pth.tar/.safetensors file itself."
    )


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
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the weights file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; check the path")
    kind = _file_format(path)
    if path.suffix == ".safetensors" or kind == "safetensors":
        raw: object = _read_safetensors(path)
    elif kind == "torch":
        raw = _torch_load(path)
    else:
        raise _not_a_checkpoint(path)
    sd = _strip_prefixes(_unwrap(raw, path, use_ema))
    if not sd:
        raise CheckpointError(f"{path} contains no tensors")
    return sd


def _cfg_names(model: nn.Module, field: str, default: str) -> tuple[str, ...]:
    """Module names from the model's pretrained_cfg (`classifier`, `first_conv`: a name or a list of names)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get(field) or default
    return (names,) if isinstance(names, str) else tuple(names)


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    return _cfg_names(model, "classifier", "head")


def _input_conv_mismatches(sd: StateDict, expected: StateDict, model: nn.Module) -> list[str]:
    """Weights of the model's input convs (pretrained_cfg `first_conv`) that differ from the checkpoint's in the
    number of input channels only (a model built with another `in_chans`)."""
    names = []
    for name in _cfg_names(model, "first_conv", ""):
        w = f"{name}.weight"
        if w in sd and w in expected and sd[w].dim() == expected[w].dim() == 4:
            (o, i, kh, kw), (eo, ei, ekh, ekw) = sd[w].shape, expected[w].shape
            if i != ei and (o, kh, kw) == (eo, ekh, ekw):
                names.append(w)
    return names


def _compare(
    sd: StateDict, expected: StateDict, tolerated: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and mis-shaped keys (those in `tolerated` may be mis-shaped)."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape and k not in tolerated
    ]
    return missing, unexpected, mismatched


def _drop_new_head(sd: StateDict, expected: StateDict, model: nn.Module) -> StateDict:
    """Drop the checkpoint's classifier when the model was built for another number of classes."""
    for name in _classifier_names(model):
        w = f"{name}.weight"
        if w not in sd or (w in expected and sd[w].shape == expected[w].shape):
            continue
        if w in expected:
            _logger.warning(
                "the checkpoint's classifier %s has shape %s, the model's %s: the model's classifier keeps its random "
                "initialisation (train it, or build the model with num_classes=%d to load the checkpoint's)",
                w, tuple(sd[w].shape), tuple(expected[w].shape), sd[w].shape[0],
            )
        else:
            _logger.info("the model has no classifier %s: the checkpoint's is left out", name)
        sd = {k: v for k, v in sd.items() if not k.startswith(f"{name}.")}
    return sd


def _format_list(title: str, items: list[str], limit: int = 12) -> str:
    if not items:
        return ""
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    {shown}{more}"


def convert_state_dict(
    sd: StateDict, model: nn.Module, strict: bool = True, adapt_input_conv: bool = True
) -> StateDict:
    """Convert a raw state dict to the model's layout and check it fits (see module docstring).

    `adapt_input_conv=False` leaves an input conv of another channel count as it is (timm's pretrained loading,
    which calls this as its filter, adapts it afterwards itself) instead of adapting it here.
    """
    for cls in type(model).__mro__:
        if cls in _FILTERS:
            sd = _FILTERS[cls](sd, model)
            break
    expected = model.state_dict()
    classifier = tuple(f"{n}." for n in _classifier_names(model))
    if any(k.startswith(classifier) for k in expected) and not any(k.startswith(classifier) for k in sd):
        _logger.warning("checkpoint has no classifier (%s): the model's head keeps its random initialisation",
                        ", ".join(c.rstrip(".") for c in classifier))
    sd = _drop_new_head(sd, expected, model)
    convs = _input_conv_mismatches(sd, expected, model)
    if adapt_input_conv:
        for w in convs:
            _logger.info("input conv %s adapted from %d to %d channels", w, sd[w].shape[1], expected[w].shape[1])
        sd = {**sd, **{w: timm_adapt_input_conv(expected[w].shape[1], sd[w]) for w in convs}}
    missing, unexpected, mismatched = _compare(sd, expected, [] if adapt_input_conv else convs)
    missing_body = [k for k in missing if not k.startswith(classifier)]
    if mismatched or (strict and (missing_body or unexpected)):  # a mis-shaped tensor never loads, strict or not
        raise CheckpointError(
            f"checkpoint does not fit {type(model).__name__}"
            + _format_list("missing in checkpoint", missing_body)
            + _format_list("unexpected in checkpoint", unexpected)
            + _format_list("shape mismatch", mismatched)
            + "\n  The checkpoint was most likely saved from another variant or configuration: create the model "
            "whose name and arguments match the checkpoint (see fastvits.list_models())."
        )
    return sd


def _fit_classifier(sd: StateDict, model: nn.Module) -> None:
    """Give `model` (timm's `reset_classifier`) a classifier as wide as the checkpoint's."""
    for name in _classifier_names(model):
        weight = sd.get(f"{name}.weight")
        if weight is not None and weight.dim() == 2 and weight.shape[0] != getattr(model, "num_classes", None):
            _logger.info("classifier %s resized to the checkpoint's %d classes", name, weight.shape[0])
            model.reset_classifier(weight.shape[0])
            return


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    use_ema: bool = False,
    fit_classifier: bool = False,
) -> nn.Module:
    """Load official or fastvits weights into `model` strictly (see module docstring); returns the model.

    `fit_classifier=True` first resizes the model's classifier to the checkpoint's number of classes, so a
    fine-tuned checkpoint loads whole into a model built with the default `num_classes` (for inference); by default a
    classifier of another width is left out and the model's own is kept (for fine-tuning).
    """
    sd = read_state_dict(path, use_ema)
    if fit_classifier:
        _fit_classifier(sd, model)
    sd = convert_state_dict(sd, model, strict)
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
