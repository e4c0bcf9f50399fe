"""`fastvits detect|segment train|eval|predict` and `fastvits make-data shapes|coins`.

`train` writes a run folder (see `engine`); `eval` and `predict` rebuild the model from that folder's
`config.json`, so they need no model flags. Every check that does not need the model's output runs before
anything is trained or written: the data and validation data, their classes and masks, the backbone, the
output folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..argtypes import json_object, non_negative_int, positive_int
from ..train.files import atomic_write_json
from .backbone import BackboneConfig
from .detection import ARCHS, DetectorConfig, build_detector
from .errors import DownstreamDataError, DownstreamSettingsError, MissingFileError
from .schedule import TrainConfig
from .segmentation import HEADS, SegmenterConfig, build_segmenter

if TYPE_CHECKING:
    from .formats import AnnotatedImages

TASKS = ("detect", "segment")
# argparse types of the TrainConfig fields that are not counts of at least 1
_TRAIN_TYPES: dict[str, Any] = {
    "lr": float, "weight_decay": float, "clip_grad": float, "seed": int,
    "warmup_steps": non_negative_int, "workers": non_negative_int,
}
SEGMENTATION_NEEDS_MASKS = (
    "semantic segmentation learns and is scored from masks: give every annotation a 'segmentation', "
    "or pass a mask folder (--masks)"
)


def _extra(module: str) -> ModuleType:
    """A data module (`annotations`, `formats`, `datasets`, `synthetic`) or `engine`, imported on use: they need
    the `detection` extra, and `fastvits` must start (for `bench`, `train`, ...) without it.
    """
    try:
        return importlib.import_module(f".{module}", __package__)
    except ModuleNotFoundError as e:
        raise SystemExit(
            f"fastvits detect, segment and make-data need {e.name}: pip install 'fastvits[detection]'"
        ) from None


def _add_data_args(p: argparse.ArgumentParser, prefix: str = "", required: bool = True) -> None:
    what = "validation " if prefix else ""
    p.add_argument(f"--{prefix}images", required=required, help=f"{what}image folder")
    p.add_argument(f"--{prefix}ann", help=f"{what}COCO-format annotation JSON")
    p.add_argument(f"--{prefix}masks", help=f"{what}class-id mask PNG folder (instead of --{prefix}ann)")


def _open_data(args: argparse.Namespace, prefix: str = "") -> AnnotatedImages:
    images, ann, masks = (getattr(args, prefix + name) for name in ("images", "ann", "masks"))
    return _extra("formats").open_annotated_images(images, ann, masks, args.classes)


def _open_val_data(args: argparse.Namespace) -> AnnotatedImages | None:
    """The validation data, opened before training so that its mistakes show at once rather than after the run."""
    if args.val_images is None:
        if args.val_ann or args.val_masks:
            raise DownstreamSettingsError("--val-ann and --val-masks need --val-images, the validation image folder")
        return None
    return _open_data(args, "val_")


def _check_train_data(source: AnnotatedImages, config: dict[str, Any]) -> None:
    """Refuses training data the model cannot learn from; torchvision would fail only at the first step."""
    if config["task"] == "segment":
        source.require_masks(SEGMENTATION_NEEDS_MASKS)
    elif config["detector"]["arch"] == "maskrcnn":
        source.require_masks("Mask R-CNN learns from masks; use --arch fasterrcnn (or retinanet/fcos) for boxes only")


def _check_eval_data(source: AnnotatedImages, config: dict[str, Any]) -> None:
    """Refuses data that cannot score the model: other classes, or no masks to compare a segmentation with.

    Detection data without masks is scored on boxes only, also for Mask R-CNN.
    """
    if source.classes != config["classes"]:
        raise DownstreamDataError(
            f"the data's classes {source.classes} differ from the model's {config['classes']}; pass data with the "
            "model's classes in its order (COCO: category ids in id order; mask folders: classes.txt)"
        )
    if config["task"] == "segment":
        source.require_masks(SEGMENTATION_NEEDS_MASKS)


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads", type=positive_int, help="CPU threads; 1 avoids thread thrashing on cores shared with other jobs"
    )


def _setup_runtime(args: argparse.Namespace) -> torch.device:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DownstreamSettingsError(
            f"--device {args.device} was given but PyTorch sees no CUDA device; use --device cpu"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def _add_train_parser(sub: argparse._SubParsersAction, task: str) -> None:
    p = sub.add_parser("train", help=f"train a {task} model; writes a run folder")
    _add_data_args(p)
    _add_data_args(p, "val-", required=False)
    p.add_argument("--classes", help="classes.txt for mask folders (default: beside the mask folder)")
    p.add_argument("--backbone", required=True, help="FasterViT/LITv2 or any timm model name")
    p.add_argument("--backbone-kwargs", type=json_object, default={}, help="model kwargs as JSON, e.g. '{\"dim\": 16}'")
    p.add_argument("--pretrained", action="store_true", help="start from the default classification weights")
    p.add_argument("--checkpoint", help="start from this classification checkpoint file")
    p.add_argument("--frozen-stages", type=int, default=-1, help="-1 none, 0 stem, k stem + first k stages")
    p.add_argument("--frozen-bn", action="store_true", help="use FrozenBatchNorm2d in the backbone")
    if task == "detect":
        p.add_argument("--arch", choices=ARCHS, default="maskrcnn")
        p.add_argument("--fpn-channels", type=positive_int, default=256)
        p.add_argument("--min-size", type=positive_int, default=800, help="shorter side after the detector's resize")
        p.add_argument("--max-size", type=positive_int, default=1333, help="longer side cap")
        p.add_argument("--detector-kwargs", type=json_object, default={}, help="torchvision detector kwargs as JSON")
    else:
        p.add_argument("--head", choices=HEADS, default="semfpn")
        p.add_argument("--channels", type=positive_int, default=256, help="head width")
        p.add_argument("--size", type=positive_int, default=512, help="shorter image side")
        p.add_argument("--crop", type=positive_int, default=512, help="training crop size")
        p.add_argument(
            "--scale-range",
            type=float,
            nargs=2,
            default=(0.5, 2.0),
            metavar=("MIN", "MAX"),
            help="random rescaling of training images (1 1: none)",
        )
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=_TRAIN_TYPES.get(name, positive_int), default=value)
    p.add_argument("--output", help=f"run folder (default runs/{task}/BACKBONE)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the previous run in the --output folder before training (default: refuse to train there)",
    )
    _add_runtime_args(p)
    p.set_defaults(func=train_command, task=task)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `detect`, `segment` and `make-data` to the `fastvits` command line."""
    for task in TASKS:
        group = subparsers.add_parser(
            task, help=f"{'object detection' if task == 'detect' else 'semantic segmentation'}"
        )
        sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")
        _add_train_parser(sub, task)

        p = sub.add_parser("eval", help="score a trained run on annotated images")
        p.add_argument("--run", type=Path, required=True, help="run folder written by train")
        _add_data_args(p)
        p.add_argument("--classes", help="classes.txt for mask folders (default: beside the mask folder)")
        p.add_argument("--max-images", type=positive_int, help="score only the first N images")
        p.add_argument("--output", type=Path, help="metrics JSON (default RUN/eval.json)")
        _add_runtime_args(p)
        p.set_defaults(func=eval_command, task=task)

        p = sub.add_parser("predict", help="draw a trained run's predictions on images")
        p.add_argument("--run", type=Path, required=True, help="run folder written by train")
        p.add_argument("inputs", nargs="+", type=Path, help="images or folders of images")
        p.add_argument("--output", type=Path, help="folder for PNGs and predictions.json (default RUN/predictions)")
        if task == "detect":
            p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections at least this confident")
        _add_runtime_args(p)
        p.set_defaults(func=predict_command, task=task)

    p = subparsers.add_parser("make-data", help="write a small dataset in COCO and mask-folder formats")
    p.add_argument("kind", choices=("shapes", "coins"), help="synthetic shapes, or scikit-image's coins photo")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-images", type=int, default=64, help="shapes only")
    p.add_argument("--size", type=positive_int, default=128, help="shapes only: image side")
    p.add_argument("--max-shapes", type=int, default=4, help="shapes only")
    p.add_argument("--seed", type=int, default=0, help="shapes only")
    p.set_defaults(func=make_data_command)


def make_data_command(args: argparse.Namespace) -> int:
    synthetic = _extra("synthetic")
    if args.kind == "shapes":
        synthetic.make_shapes_dataset(args.out, args.num_images, args.size, args.max_shapes, args.seed)
    else:
        synthetic.make_coins_dataset(args.out)
    print(f"wrote {args.out}: images/, masks/, classes.txt, annotations.json")
    return 0


def build_model(config: dict[str, Any], load_pretrained: bool = False) -> nn.Module:
    """Builds a run's model; eval and predict skip the backbone's pretrained weights, the run's replace them."""
    overrides = {} if load_pretrained else dict(pretrained=False, checkpoint=None)
    backbone = BackboneConfig(**config["backbone"] | overrides)
    if config["task"] == "detect":
        return build_detector(DetectorConfig(**config["detector"]), backbone)
    return build_segmenter(SegmenterConfig(**config["segmenter"]), backbone)


def _load_run(run_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {run_dir} not found; pass a folder written by `train` as --run")
    path = run_dir / "config.json"
    if not path.is_file():
        raise MissingFileError(
            f"{run_dir} has no config.json, which `train` writes when it finishes; pass the folder of a finished "
            "run as --run"
        )
    config = _extra("annotations").read_json(path)
    return _extra("engine").load_weights(build_model(config), run_dir), config


def _evaluate(
    model: nn.Module, config: dict[str, Any], source: AnnotatedImages, device: torch.device, max_images: int | None
) -> dict[str, float]:
    _check_eval_data(source, config)
    engine = _extra("engine")
    if config["task"] == "detect":
        return engine.evaluate_detection(model, source, device, max_images)
    return engine.evaluate_segmentation(model, source, config["size"], device, max_images)


def train_command(args: argparse.Namespace) -> int:
    device = _setup_runtime(args)
    torch.manual_seed(args.seed)
    source, val_source = _open_data(args), _open_val_data(args)
    backbone = BackboneConfig(
        args.backbone, args.pretrained, args.checkpoint, args.frozen_stages, args.frozen_bn, args.backbone_kwargs
    )
    datasets, engine = _extra("datasets"), _extra("engine")
    train_cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig())})
    config: dict[str, Any] = dict(
        task=args.task, classes=source.classes, backbone=asdict(backbone), train=asdict(train_cfg)
    )
    num_classes = len(source.classes) + 1
    if args.task == "detect":
        config["detector"] = asdict(
            DetectorConfig(
                args.arch, num_classes, args.fpn_channels, args.min_size, args.max_size, args.detector_kwargs
            )
        )
        dataset, collate = datasets.DetectionDataset(source, train=True), datasets.detection_collate
        loss_fn = engine.detection_losses
    else:
        config["segmenter"] = asdict(SegmenterConfig(args.head, num_classes, args.channels))
        config |= dict(size=args.size, crop=args.crop, scale_range=list(args.scale_range))
        dataset, collate, loss_fn = (
            datasets.SegmentationDataset(source, args.size, args.crop, train=True, scale_range=tuple(args.scale_range)),
            None,
            engine.segmentation_losses,
        )
    _check_train_data(source, config)
    if val_source is not None:
        _check_eval_data(val_source, config)
    model = build_model(config, load_pretrained=True)
    out_dir = Path(args.output or f"runs/{args.task}/{args.backbone}")
    engine.prepare_run_dir(out_dir, args.overwrite)
    loader = DataLoader(
        dataset,
        train_cfg.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=train_cfg.workers,
        drop_last=len(dataset) > train_cfg.batch_size,
    )
    start = time.perf_counter()
    history = engine.train(model, loader, loss_fn, train_cfg, out_dir, device)
    results: dict[str, Any] = dict(
        steps=len(history), final_loss=history[-1], train_seconds=time.perf_counter() - start
    )
    engine.save_run(out_dir, model, config)
    if val_source is not None:
        results |= _evaluate(model, config, val_source, device, None)
    atomic_write_json(out_dir / "results.json", results)
    print(json.dumps(results, indent=2))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    device = _setup_runtime(args)
    model, config = _load_run(args.run)
    metrics = _evaluate(model, config, _open_data(args), device, args.max_images)
    atomic_write_json(args.output or args.run / "eval.json", metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def _expand_images(inputs: list[Path]) -> list[Path]:
    """The image files named by `inputs` or held in the folders they name, in the order given, each file once
    (a file given twice, or given and inside a given folder, would otherwise be drawn twice).

    Each file's header is read, so an undecodable file is refused before anything is written.
    """
    formats = _extra("formats")
    suffixes = formats.IMAGE_SUFFIXES
    paths: dict[Path, Path] = {}  # resolved -> as given
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in suffixes)
            if not found:
                raise MissingFileError(f"folder {item} holds no {'/'.join(suffixes)} images; pass images or folders")
        elif item.is_file():
            found = [item]
        else:
            raise MissingFileError(f"input {item} not found; pass image files or folders of images")
        for path in found:
            paths.setdefault(path.resolve(), path)
    for path in paths.values():
        formats.image_size(path)
    return list(paths.values())


def predict_command(args: argparse.Namespace) -> int:
    device = _setup_runtime(args)
    model, config = _load_run(args.run)
    paths, engine = _expand_images(args.inputs), _extra("engine")
    out_dir = args.output or args.run / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    if config["task"] == "detect":
        records = engine.predict_detection(model, paths, out_dir, config["classes"], device, args.score_thresh)
    else:
        records = engine.predict_segmentation(model, paths, out_dir, config["classes"], config["size"], device)
    atomic_write_json(out_dir / "predictions.json", records)
    print(f"wrote {len(records)} drawings to {out_dir}")
    return 0
