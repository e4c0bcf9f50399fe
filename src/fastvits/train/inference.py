"""`fastvits validate` and `fastvits predict`: evaluate or apply a trained model.

The model comes from a training run folder (`--run`, which knows the model, its classes and its
pre-processing), from a model name plus an optional weights file (`--model`, `--checkpoint`), e.g. an
official FasterViT checkpoint with its 1000 ImageNet classes, or from an artifact folder of `fastvits export`
(`--artifact`: ONNX Runtime or OpenVINO, fp32, bf16 or int8, with its classes and pre-processing).
A run or a named model runs as `optimize_for_inference(model, precision=...)` (fp32, or bf16 weights and activations);
an artifact runs in its own runtime and precision.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import resolve_data_config
from torch.utils.data import DataLoader
from torchvision import transforms

from ..checkpoint import load_checkpoint
from ..inference import optimize_for_inference
from .data import DataSource, check_classes, class_names, eval_transform, load_image, open_dataset, parse_data
from .distributed import cleanup, init_distributed, kept_num_threads, share_cpus
from .engine import evaluate
from .errors import DataError, TrainError
from .modeling import ModelSpec, build_model, default_class_names, load_run
from .sampling import ShardSampler
from .trainer import AMP_DTYPES

__all__ = ["ModelSource", "load_for_inference", "predict", "validate"]


@dataclass
class ModelSource:
    """Where the model comes from: a run folder, or a name with optional weights."""

    run: Path | None = None
    ema: bool = False
    model: str | None = None
    checkpoint: str | None = None
    num_classes: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    artifact: Path | None = None


def load_for_inference(source: ModelSource, device: torch.device) -> tuple[nn.Module, ModelSpec]:
    """The model in eval mode on `device`, and its spec (classes and data config). An artifact runs on the CPU."""
    if source.artifact is not None:
        from ..deploy import load_artifact

        artifact = load_artifact(source.artifact)
        meta = artifact.metadata["model"]
        names = artifact.class_names or default_class_names(artifact.num_classes)
        return artifact, ModelSpec(name=meta["name"], num_classes=artifact.num_classes, class_names=names,
                                   kwargs=meta["kwargs"], data_config=artifact.data_config)
    if source.run is not None:
        model, spec = load_run(source.run, "ema" if source.ema else "model")
    elif source.model is not None:
        model = build_model(source.model, num_classes=source.num_classes, **source.model_kwargs)
        _load_weights(model, source)
        spec = ModelSpec(name=source.model, num_classes=model.num_classes,
                         class_names=default_class_names(model.num_classes), kwargs=source.model_kwargs,
                         data_config=resolve_data_config(model=model))
    else:
        raise ValueError("name the model: --run RUN_FOLDER, --model NAME [--checkpoint FILE] or --artifact FOLDER")
    spec.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.data_config.items()}
    return model.to(device).eval(), spec


def _load_weights(model: nn.Module, source: ModelSource) -> None:
    """`--checkpoint` whole, classifier included: a classifier of other width than the model's would otherwise be
    left out, and a random one would make the predictions. Without a checkpoint the weights are the model's
    initialisation (random, unless --model-kwargs asks for pretrained ones), which is said."""
    if source.checkpoint is None:
        print(f"note: no --checkpoint: {source.model} runs on its initial (random) weights", file=sys.stderr)
        return
    load_checkpoint(model, source.checkpoint, fit_classifier=True)
    if source.num_classes is not None and model.num_classes != source.num_classes:
        raise TrainError(f"--num-classes {source.num_classes}, but the classifier in {source.checkpoint} has "
                         f"{model.num_classes} classes; drop --num-classes (the checkpoint sets it)")


def _inference_form(model: nn.Module, source: ModelSource, precision: str) -> nn.Module:
    """The model as it runs: an artifact as it is, anything else through the inference engine in `precision`."""
    if source.artifact is not None:
        if precision != "fp32":
            raise TrainError(f"--precision {precision} does not apply to an artifact, which runs in the precision it "
                             f"was exported in ({model.precision}); drop --precision")
        return model
    return optimize_for_inference(model, precision=precision)


@kept_num_threads()
def validate(source: ModelSource, data: str = "fashion-mnist", split: str = "val", batch_size: int = 256,
             workers: int | None = None, img_size: tuple[int, int] | None = None, limit: int | None = None,
             device: str = "auto", amp: str = "none", channels_last: bool = False,
             progress: bool = True, precision: str = "fp32") -> dict[str, Any]:
    """Top-1/top-5 accuracy, loss and throughput on a dataset split (works under `torchrun` too).

    Args:
        precision: the inference engine's precision for a run or a named model ("fp32" or "bf16").

    Returns:
        A result row with timm's column names (model, top1, top1_err, top5, top5_err, param_count, img_size,
        crop_pct, interpolation) plus loss, samples, samples_per_sec, precision and runtime.
    """
    dist_info = init_distributed("cpu" if source.artifact is not None else device)  # artifacts run on the CPU
    workers, _ = share_cpus(dist_info.world_size, workers)
    try:
        plain, spec = load_for_inference(source, dist_info.device)
        model = _inference_form(plain, source, precision)
        data_source = parse_data(data, val_split=split)
        _check_labels(source, spec, data_source)
        config = _sized(spec.data_config, img_size)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        dataset = open_dataset(data_source, "val", eval_transform(config), limit)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                            sampler=ShardSampler(len(dataset), dist_info.rank, dist_info.world_size))
        result = evaluate(model, loader, dist_info.device, AMP_DTYPES[amp], channels_last,
                          progress=progress and dist_info.is_main)
        params = (plain.metadata["model"].get("param_count") if source.artifact is not None
                  else sum(p.numel() for p in plain.parameters()))
        return {
            "model": str(source.artifact or source.run or spec.name),
            "top1": result["top1"], "top1_err": 100 - result["top1"],
            "top5": result["top5"], "top5_err": 100 - result["top5"], "loss": result["loss"],
            "param_count": round(params / 1e6, 3) if params is not None else None,
            "img_size": config["input_size"][-1], "crop_pct": config["crop_pct"],
            "interpolation": config["interpolation"], "samples": result["samples"],
            "samples_per_sec": result["samples_per_sec"],
            "precision": plain.precision if source.artifact is not None else precision,
            "runtime": plain.runtime if source.artifact is not None else "torch",
        }
    finally:
        cleanup()


def _check_labels(source: ModelSource, spec: ModelSpec, data: DataSource) -> None:
    """A run knows its class names, and the data must have the same ones (`check_classes`); a model named with
    --model knows only the width of its classifier."""
    if source.run is not None:
        check_classes(data, "val", spec.class_names, f"the model in {source.run}")
        return
    classes = class_names(data, "val")
    if len(classes) != spec.num_classes:
        raise DataError(f"{data.name} has {len(classes)} classes but the model predicts {spec.num_classes}; "
                        "validate on the dataset the model was trained for")


def _sized(config: dict[str, Any], img_size: tuple[int, int] | None) -> dict[str, Any]:
    """The data config with its input size replaced by `img_size` (H, W), if given."""
    return config if img_size is None else {**config, "input_size": (config["input_size"][0], *img_size)}


def _native_transform(config: dict[str, Any]) -> Any:
    """Only convert and normalise: the image keeps its size (for any-resolution models)."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(config["mean"], config["std"])])


@torch.no_grad()
def predict(source: ModelSource, images: list[str], topk: int = 5, native_size: bool = False,
            img_size: tuple[int, int] | None = None, device: str = "auto",
            precision: str = "fp32") -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file.

    Args:
        native_size: feed every image at its own resolution instead of resizing and cropping it to the
            model's input size; only for models that accept any input size (e.g. FasterViT's any-res).
        img_size: resize/crop to this (H, W) instead of the model's data config.
        precision: the inference engine's precision for a run or a named model ("fp32" or "bf16").

    Returns:
        One dict per image: image path, size (W, H), and "top" as a list of {label, index, probability}.
    """
    target = init_distributed("cpu" if source.artifact is not None else device).device  # artifacts run on the CPU
    plain, spec = load_for_inference(source, target)
    model = _inference_form(plain, source, precision)
    config = _sized(spec.data_config, img_size)
    transform = _native_transform(config) if native_size else eval_transform(config)
    k = min(topk, spec.num_classes)
    results = []
    for path in images:
        if not Path(path).is_file():
            raise DataError(f"image {path} does not exist")
        image = load_image(path)
        x = transform(image).unsqueeze(0).to(target)  # (1, 3, H, W)
        try:
            logits = model(x)
        except (ValueError, RuntimeError) as e:  # models reject sizes they cannot take, in their own words
            where = "at its own size" if native_size else f"at {x.shape[-2]}x{x.shape[-1]} (H x W)"
            fix = ("Drop --native-size to resize it to the model's input size." if native_size else
                   "Pass another --img-size, or none for the model's own input size.")
            raise DataError(f"{path} ({image.size[0]}x{image.size[1]}) cannot be fed {where}: {e} {fix}") from e
        probs = logits.float().softmax(dim=1)[0]
        values, indices = probs.topk(k)
        results.append({
            "image": path, "size": list(image.size),
            "top": [{"label": spec.class_names[i], "index": i, "probability": p}
                    for p, i in zip(values.tolist(), indices.tolist(), strict=True)],
        })
    return results
