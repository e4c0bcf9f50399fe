"""What `--resume` must keep: the checkpoint's model and every setting that changes the result.

A resumed run continues the one that wrote the checkpoint, exactly, so it takes that run's settings. A changed
--epochs or --lr would not even take effect (the schedule lives in the scheduler state) while run.json recorded
the new value. Each checkpoint therefore stores the run's record (`run_record`), and `check_resume` refuses a
resume that differs, naming every changed setting as `--flag OLD -> NEW`; to change settings, start a new run in
another --output (from the old weights with --checkpoint, if wanted).

Settings that say where and how a run computes, not what, may change (`FREE_SETTINGS`): the same run on another
device, with other thread counts or compiled gives the same numbers up to float rounding. The per-process batch
and the accumulation steps may change too (with the process count), as long as their product, the global batch
of an optimizer step, stays: the data order and the losses depend on that alone (see `sampling.py`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .data import FASHION_MNIST, format_names
from .errors import CheckpointError, TrainError
from .options import TrainOptions

__all__ = ["FREE_SETTINGS", "check_resume", "run_record"]

FREE_SETTINGS = frozenset({
    "output", "resume",  # where the run lives
    "device", "workers", "threads", "compile", "channels_last", "grad_checkpointing", "eval_batch_size",  # how
    "progress", "check_data", "save_every", "keep_checkpoints",  # what it shows, checks and keeps
    "batch_size", "accum_steps",  # the global batch they make is checked on its own
})
_MODEL_OPTIONS = ("model", "model_kwargs")
_MODEL_KEYS = (*_MODEL_OPTIONS, "class_names")  # what the record says about the model


def _plain(value: Any) -> Any:
    """`value` as JSON gives it back (tuples become lists, paths strings), as a checkpoint stores it."""
    return json.loads(json.dumps(value, default=str))


def _same_file_text(value: str | None) -> str | None:
    """A path as one spelling (absolute, links resolved), so `data`, `./data` and `/abs/data` compare equal after a
    change of working directory; other values ("fashion-mnist", names) unchanged."""
    if value is None:
        return None
    prefix, sep, rest = value.partition(":") if value.startswith(f"{FASHION_MNIST}:") else ("", "", value)
    return f"{prefix}{sep}{Path(rest).resolve()}" if Path(rest).exists() else value


def run_record(opts: TrainOptions, class_names: list[str]) -> dict[str, Any]:
    """What a checkpoint stores about its run: the model (name, constructor arguments, classes) and, under
    "settings", every option and recipe field that is not free to change on resume (paths as absolute paths)."""
    options = {k: v for k, v in dataclasses.asdict(opts).items()
               if k not in FREE_SETTINGS and k not in _MODEL_OPTIONS and k != "recipe"}
    options.update(data=_same_file_text(opts.data), checkpoint=_same_file_text(opts.checkpoint))
    return {
        "model": opts.model, "model_kwargs": _plain(opts.model_kwargs), "class_names": list(class_names),
        "settings": _plain({**options, **dataclasses.asdict(opts.recipe)}),
    }


def _model_text(record: dict[str, Any]) -> str:
    kwargs = f" {json.dumps(record['model_kwargs'])}" if record["model_kwargs"] else ""
    names = record["class_names"]
    return f"{record['model']}{kwargs} with {len(names)} classes {format_names(names)}"


def _flag_value(value: Any) -> str:
    """A value as it is written on the command line ("none" for unset)."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return " ".join(map(_flag_value, value))
    return str(value)


def check_resume(path: Path, state: dict[str, Any], record: dict[str, Any], step_size: int) -> None:
    """Refuse to continue the checkpoint `state` (read from `path`) with another model or other settings.

    Args:
        record: this run's `run_record`.
        step_size: this run's global batch (batch x processes x accumulation).

    Raises:
        CheckpointError: the checkpoint holds another model, or was trained with another global batch.
        TrainError: settings differ; the message lists each as `--flag OLD -> NEW`.
    """
    stored = state["run"]
    if "settings" not in stored:  # version 1 recorded the model name and preset only
        stored = {**record, "model": stored["model"]}
    if any(stored[key] != record[key] for key in _MODEL_KEYS):
        raise CheckpointError(f"{path} holds {_model_text(stored)}, but this run builds {_model_text(record)}; "
                              "--resume needs a checkpoint of the run's own model: check --resume, --output, --model, "
                              "--model-kwargs and --data")
    old, new = stored["settings"], record["settings"]
    changed = [f"--{key.replace('_', '-')} {_flag_value(old.get(key))} -> {_flag_value(new[key])}"
               for key in new if old.get(key) != new[key]]
    if changed:
        raise TrainError(f"{path} was trained with other settings: {', '.join(changed)}. --resume continues a run "
                         "with its own settings (its run.json lists them): repeat them, or start a new run with "
                         "another --output to change them")
    trained = state["progress"]["step_size"]
    if trained != step_size:
        raise CheckpointError(f"{path} was trained with {trained} images per optimizer step; this run has "
                              f"{step_size} (batch x processes x accumulation). Resume with the same global batch.")
