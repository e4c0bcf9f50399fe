"""The `train`, `validate` and `predict` subcommands of the `fastvits` command line.

Every `Recipe` field becomes an override flag of `train` (`--lr-base`, `--mixup`, `--ema-decay none`, ...),
generated from the dataclass so the recipe and its flags cannot drift apart. Problems the user can fix
(`fastvits.errors.UserError`) print one line and exit with status 2 (`fastvits.cli.main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..argtypes import json_object, positive_int
from .errors import TrainError
from .files import atomic_write_csv, atomic_write_json, require_writable_file
from .inference import ModelSource, predict, validate
from .options import TrainOptions
from .recipe import PRESETS, Recipe
from .trainer import default_preset, run_training

__all__ = ["register"]


def _optional(kind: type) -> Callable[[str], Any]:
    """An argparse type for `X | None` fields: the word "none" switches the setting off."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS leaves flags that were not given out of the namespace, so "--ema-decay none" (None) differs
    # from "not given" (keep the preset's value).
    group = parser.add_argument_group("recipe overrides (default: the preset's value, shown for fastervit)",
                                      argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(Recipe)
    for f in dataclasses.fields(Recipe):
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} [fastervit: {f.default}]"
        if typing.get_origin(kind) is tuple:
            group.add_argument(flag, type=float, nargs=2, metavar=("LOW", "HIGH"), help=text)
        elif typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            inner = next(a for a in typing.get_args(kind) if a is not type(None))
            group.add_argument(flag, type=_optional(inner), metavar=inner.__name__.upper(), help=text + " (or none)")
        else:
            group.add_argument(flag, type=kind, metavar=kind.__name__.upper(), help=text)


def _recipe(args: argparse.Namespace, preset: str) -> Recipe:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if hasattr(args, f.name)}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return dataclasses.replace(PRESETS[preset], **overrides)


def _size(values: list[int] | None) -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise TrainError(f"--img-size takes SIZE or HEIGHT WIDTH, got {len(values)} numbers")
    return (values[0], values[-1])


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--img-size", type=positive_int, nargs="+", metavar="N",
                        help="input size: SIZE or HEIGHT WIDTH (default: the model's data config)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: GPU if any")


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (a training run, a name with optional weights, or an artifact)")
    group.add_argument("--run", type=Path, help="output folder of `fastvits train`")
    group.add_argument("--ema", action="store_true", help="with --run: use the EMA weights")
    group.add_argument("--model", help="timm or fastvits model name")
    group.add_argument("--checkpoint", help="with --model: weights file (.safetensors, official .pth/.pth.tar)")
    group.add_argument("--num-classes", type=positive_int, help="with --model: classifier width (default: the model's)")
    group.add_argument("--model-kwargs", type=json_object, default={}, help="with --model: constructor arguments")
    group.add_argument("--artifact", type=Path, help="folder written by `fastvits export` (ONNX Runtime or OpenVINO)")
    group.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                       help="with --run or --model: the inference engine's precision (an artifact has its own)")


def _model_source(args: argparse.Namespace) -> ModelSource:
    if sum(x is not None for x in (args.run, args.model, args.artifact)) != 1:
        raise TrainError("name the model with exactly one of --run RUN_FOLDER, --model NAME or --artifact FOLDER")
    return ModelSource(run=args.run, ema=args.ema, model=args.model, checkpoint=args.checkpoint,
                       num_classes=args.num_classes, model_kwargs=args.model_kwargs, artifact=args.artifact)


def _train(args: argparse.Namespace) -> int:
    preset = args.preset or default_preset(args.data)
    options = TrainOptions(
        model=args.model, recipe=_recipe(args, preset), preset=preset, model_kwargs=args.model_kwargs,
        checkpoint=args.checkpoint, pretrained=args.pretrained, data=args.data, train_split=args.train_split,
        val_split=args.val_split, train_samples=args.train_samples, val_samples=args.val_samples,
        img_size=_size(args.img_size), check_data=args.check_data, lr=args.lr, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, accum_steps=args.accum_steps, workers=args.workers, threads=args.threads,
        output=args.output, resume=args.resume, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        grad_checkpointing=args.grad_checkpointing, seed=args.seed, progress=not args.no_progress,
    )
    run_training(options)
    return 0


def _validate(args: argparse.Namespace) -> int:
    if args.results_file:
        require_writable_file(args.results_file, "--results-file")  # before the evaluation, not after it
    row = validate(_model_source(args), data=args.data, split=args.split, batch_size=args.batch_size,
                   workers=args.workers, img_size=_size(args.img_size), limit=args.limit, device=args.device,
                   amp=args.amp, channels_last=args.channels_last, progress=not args.no_progress,
                   precision=args.precision)
    print(f"{row['model']}: top-1 {row['top1']:.2f}%, top-5 {row['top5']:.2f}%, loss {row['loss']:.4f} "
          f"on {row['samples']} images; {row['param_count']} M params, {row['samples_per_sec']:.1f} img/s "
          f"(forward passes at {row['img_size']} px, {row['precision']} {row['runtime']})")
    if args.results_file:
        if args.results_file.endswith(".csv"):
            atomic_write_csv(args.results_file, [row], list(row))
        else:
            atomic_write_json(args.results_file, row)
    return 0


def _predict(args: argparse.Namespace) -> int:
    if args.results_file:
        require_writable_file(args.results_file, "--results-file")
    results = predict(_model_source(args), args.images, topk=args.topk, native_size=args.native_size,
                      img_size=_size(args.img_size), device=args.device, precision=args.precision)
    for r in results:
        ranked = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top"])
        print(f"{r['image']} ({r['size'][0]}x{r['size'][1]}): {ranked}")
    if args.results_file:
        atomic_write_json(args.results_file, results)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `validate` and `predict` to the `fastvits` command line."""
    train_p = subparsers.add_parser(
        "train", help="train or fine-tune a model (Fashion-MNIST or an ImageFolder; torchrun for several processes)",
        description="Train or fine-tune any timm/fastvits model. Several processes: "
                    "torchrun --nproc_per_node N $(which fastvits) train ...",
    )
    train_p.add_argument("--model", required=True, help="timm or fastvits model name, e.g. fastervit_0_224, resnet18")
    train_p.add_argument("--model-kwargs", type=json_object, default={}, help="constructor arguments as JSON")
    train_p.add_argument("--checkpoint", help="initial weights to fine-tune from (official .pth/.pth.tar or "
                       ".safetensors); a classifier of another width is re-initialised")
    train_p.add_argument("--pretrained", action="store_true", help="start from the model's published weights "
                       "(downloads them; offline, use --checkpoint FILE)")
    data = train_p.add_argument_group("data")
    data.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default), fashion-mnist:FOLDER, or "
                      "an ImageFolder root with train/ and val/ sub-folders")
    data.add_argument("--train-split", default="train", help="ImageFolder sub-folder for training")
    data.add_argument("--val-split", default="val", help="ImageFolder sub-folder for evaluation")
    data.add_argument("--train-samples", type=int, help="train on a fixed random subset of this size")
    data.add_argument("--val-samples", type=int, help="evaluate on a fixed random subset of this size")
    data.add_argument("--check-data", action="store_true", help="decode every image first, list unreadable files")
    data.add_argument("--workers", type=int, help="data-loading processes per rank (default: spare cores, max 4)")
    data.add_argument("--threads", type=int, help="compute threads per rank (default: its cores minus --workers)")
    run = train_p.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), help="recipe: fashion-mnist for Fashion-MNIST, else "
                     "fastervit (the FasterViT ImageNet recipe); finetune for transfer from ImageNet weights")
    run.add_argument("--lr", type=float, help="absolute learning rate (default: lr-base scaled by the global batch)")
    run.add_argument("-b", "--batch-size", type=int, default=128, help="batch size per process (default 128)")
    run.add_argument("--eval-batch-size", type=int, help="default: twice --batch-size")
    run.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    run.add_argument("--output", type=Path, help="run folder (default runs/MODEL-DATA)")
    run.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                     help="continue the run in --output from its newest checkpoint, or from CHECKPOINT")
    run.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                     help="also checkpoint every STEPS optimizer steps within epochs (default: epoch ends only)")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept (default 2)")
    run.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision (fp16: GPU)")
    run.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster on GPUs)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--grad-checkpointing", action="store_true", help="trade compute for activation memory")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--no-progress", action="store_true", help="no progress bars (off anyway when not a terminal)")
    _add_common(run)
    _add_recipe_flags(train_p)
    train_p.set_defaults(func=_train)

    validate_p = subparsers.add_parser("validate", help="top-1/top-5, loss and throughput on a dataset split")
    _add_model_source(validate_p)
    validate_p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (test split) or an ImageFolder root")
    validate_p.add_argument("--split", default="val", help="ImageFolder sub-folder (default val)")
    validate_p.add_argument("-b", "--batch-size", type=int, default=256)
    validate_p.add_argument("--workers", type=int, help="data-loading processes (default: spare cores, max 4)")
    validate_p.add_argument("--limit", type=int, help="evaluate a fixed random subset of this size")
    validate_p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    validate_p.add_argument("--channels-last", action="store_true")
    validate_p.add_argument("--no-progress", action="store_true")
    validate_p.add_argument("--results-file", help="write the result row as .json or .csv")
    _add_common(validate_p)
    validate_p.set_defaults(func=_validate)

    predict_p = subparsers.add_parser("predict", help="top-k classes with probabilities for image files")
    predict_p.add_argument("images", nargs="+", metavar="IMAGE")
    _add_model_source(predict_p)
    predict_p.add_argument("--topk", type=positive_int, default=5)
    predict_p.add_argument("--native-size", action="store_true",
                         help="keep each image's own size (any-resolution models) instead of resize and crop")
    predict_p.add_argument("--results-file", help="also write the predictions as JSON")
    _add_common(predict_p)
    predict_p.set_defaults(func=_predict)
