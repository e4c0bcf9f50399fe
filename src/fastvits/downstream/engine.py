"""Training and evaluation loops, metrics, logs and run folders for detection and segmentation.

A run folder holds `config.json` (everything needed to rebuild the model), `model.safetensors`,
`log.csv` (one row per step), `summary.csv` (one row per epoch) and `results.json` (final metrics).
The model and then `config.json` are written last, each atomically, so a folder with `config.json` holds a
finished run and a run killed part-way has none. A new run never goes into a folder holding another run's
files (`prepare_run_dir`), so its log cannot end up beside an older model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.cocoeval import COCOeval
from safetensors.torch import load_model
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..checkpoint import save_safetensors
from ..inference import optimize_for_inference
from ..progress import progress
from ..train.files import atomic_write_json
from .annotations import encode_mask
from .datasets import DetectionDataset, SegmentationDataset, resize_short_side, to_tensor
from .errors import MissingFileError, RunExistsError
from .formats import AnnotatedImages, load_rgb
from .schedule import TrainConfig, lr_factor
from .segmentation import IGNORE_INDEX
from .visualize import draw_detections, draw_segmentation

# Names for pycocotools' 12 summary numbers, in its order.
COCO_STATS = (
    "mAP",
    "mAP_50",
    "mAP_75",
    "mAP_s",
    "mAP_m",
    "mAP_l",
    "mAR_1",
    "mAR_10",
    "mAR_100",
    "mAR_s",
    "mAR_m",
    "mAR_l",
)
LossFn = Callable[[nn.Module, Any, torch.device], dict[str, torch.Tensor]]
# What a run folder can hold: `train`'s files, and `eval`'s and `predict`'s default outputs.
RUN_FILES = ("config.json", "model.safetensors", "log.csv", "summary.csv", "results.json", "eval.json", "predictions")


def prepare_run_dir(out_dir: Path, overwrite: bool = False) -> None:
    """Creates `out_dir` for a new run, refusing one that holds another run's files unless `overwrite`.

    Training into an old run's folder would put the new log beside the old model (and old metrics and
    predictions) until the end, so `overwrite` deletes the old run's files first: only `RUN_FILES`, other
    files in the folder are the user's and stay.

    Raises:
        RunExistsError: `out_dir` holds some of `RUN_FILES` and `overwrite` is False, or is a file.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise RunExistsError(f"--output {out_dir} is a file; pass a folder for the run")
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found and not overwrite:
        raise RunExistsError(
            f"{out_dir} already holds a run ({', '.join(found)}); pass --output NEW_FOLDER to keep it, "
            "or --overwrite to delete it and train anew"
        )
    for name in found:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


class CsvLog:
    """Appends rows to a CSV file whose columns are the first row's keys."""

    def __init__(self, path: Path) -> None:
        self.path, self.fields = path, None

    def write(self, row: dict[str, Any]) -> None:
        first = self.fields is None
        self.fields = self.fields or list(row)
        with self.path.open("w" if first else "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            if first:
                writer.writeheader()
            writer.writerow(row)


def detection_losses(model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """torchvision detectors return their loss dict in train mode."""
    images, targets = batch
    return model([i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets])


def segmentation_losses(model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
    images, masks = batch
    return {"loss_ce": F.cross_entropy(model(images.to(device)), masks.to(device), ignore_index=IGNORE_INDEX)}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only matrices and kernels; decaying norm scales and biases hurts transformers."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        dict(params=[p for p in params if p.ndim > 1], weight_decay=weight_decay),
        dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0),
    ]


def train(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
) -> list[float]:
    """Trains with AdamW, warm-up and cosine decay, logging every step to `log.csv`, every epoch to `summary.csv`.

    Returns:
        The total loss of each step.
    """
    total = len(loader) * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, len(loader) * cfg.epochs)
    warmup = min(cfg.warmup_steps, max(total // 10, 1))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup, total=total))
    step_log, epoch_log = CsvLog(out_dir / "log.csv"), CsvLog(out_dir / "summary.csv")
    history: list[float] = []
    model.to(device).train()
    bar = progress(total=total, desc="train")
    for epoch in range(cfg.epochs):
        start, epoch_losses = time.perf_counter(), []
        for batch in loader:
            losses = loss_fn(model, batch, device)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {len(history)}; lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            history.append(loss.item())
            epoch_losses.append(loss.item())
            row = dict(epoch=epoch, step=len(history), lr=optimizer.param_groups[0]["lr"], loss=loss.item())
            step_log.write(row | {k: v.item() for k, v in losses.items()})
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
            if len(history) == total:
                break
        epoch_log.write(dict(epoch=epoch, train_loss=float(np.mean(epoch_losses)), seconds=time.perf_counter() - start))
        if len(history) == total:
            break
    bar.close()
    return history


def detections_to_coco(
    output: dict[str, torch.Tensor], image_id: int, category_id: Callable[[int], int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's detector output -> COCO result records for box and (if present) mask evaluation.

    The two lists are kept apart because pycocotools takes a record's area from its box when both are
    present, which would put masks in the wrong small/medium/large bucket.
    """
    boxes = output["boxes"].cpu().numpy().copy()  # a CPU tensor's numpy() shares its memory: the output stays as it is
    boxes[:, 2:] -= boxes[:, :2]  # x1, y1, x2, y2 -> x, y, w, h
    common = [
        dict(image_id=image_id, category_id=category_id(int(label)), score=float(score))
        for label, score in zip(output["labels"].tolist(), output["scores"].tolist())
    ]
    box_results = [c | dict(bbox=b.tolist()) for c, b in zip(common, boxes)]
    mask_results = []
    if "masks" in output:
        masks = (output["masks"][:, 0] > 0.5).cpu().numpy()  # (N, 1, H, W) probabilities -> (N, H, W)
        mask_results = [c | dict(segmentation=encode_mask(m)) for c, m in zip(common, masks)]
    return box_results, mask_results


def coco_metrics(
    source: AnnotatedImages, results: list[dict[str, Any]], iou_type: str, image_ids: Sequence[int]
) -> dict[str, float]:
    """pycocotools' 12 summary numbers for `iou_type` ("bbox" or "segm"), as `{iou_type}_{name}`."""
    if not results:  # pycocotools cannot load an empty result list; nothing detected scores 0
        return {f"{iou_type}_{name}": 0.0 for name in COCO_STATS}
    gt = source.coco_gt()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {f"{iou_type}_{name}": float(v) for name, v in zip(COCO_STATS, evaluator.stats)}


@torch.no_grad()
def evaluate_detection(
    model: nn.Module, source: AnnotatedImages, device: torch.device, max_images: int | None = None
) -> dict[str, float]:
    """COCO box mAP, plus mask mAP for models that predict masks."""
    model = optimize_for_inference(model.to(device))
    dataset = DetectionDataset(source)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    box_results, mask_results, image_ids, has_masks = [], [], [], False
    for index in progress(range(count), desc="eval"):
        image, target = dataset[index]
        (output,) = model([image.to(device)])
        image_ids.append(int(target["image_id"]))
        boxes, masks = detections_to_coco(output, image_ids[-1], source.category_id)
        box_results += boxes
        mask_results += masks
        has_masks = "masks" in output
    metrics = coco_metrics(source, box_results, "bbox", image_ids)
    if has_masks and source.missing_masks() is None:  # box-only ground truth has no masks to score against
        metrics |= coco_metrics(source, mask_results, "segm", image_ids)
    return metrics


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module, source: AnnotatedImages, size: int, device: torch.device, max_images: int | None = None
) -> dict[str, float]:
    """mIoU over the classes present in ground truth or prediction, pixel accuracy, and per-class IoU.

    Logits are resized to each mask's own resolution before the argmax, so scores do not depend on `size`
    through mask resampling.
    """
    model = optimize_for_inference(model.to(device))
    num_classes = len(source.classes) + 1
    # NaN for classes absent from both prediction and ground truth, so they do not count as IoU 0.
    jaccard = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX, zero_division=float("nan"))
    accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
    dataset = SegmentationDataset(source, size)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in progress(range(count), desc="eval"):
        image, mask = dataset[index]
        logits = model(image[None].to(device))
        logits = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        prediction = logits.argmax(1).cpu()
        jaccard.update(prediction, mask[None])
        accuracy.update(prediction, mask[None])
    iou = jaccard.compute()
    names = ["background", *source.classes]
    return dict(mIoU=float(iou.nanmean()), aAcc=float(accuracy.compute())) | {
        f"IoU_{n}": float(v) for n, v in zip(names, iou)
    }


def output_names(paths: Sequence[Path], suffixes: Sequence[str] = ("",)) -> list[str]:
    """A distinct output name per input: its stem, or `stem_2`, `stem_3`, ... when another input has taken it.

    Inputs from different folders often share a stem (`val/00000.png`, `train/00000.png`). Each input writes
    `NAME + suffix + ".png"` for every suffix, and no file may be written by two inputs, so a name is free only
    when all its files are. Names are compared case-insensitively, as macOS and Windows file systems do.
    """
    taken: set[str] = set()
    names = []
    for path in paths:
        name, k = path.stem, 1
        while any((name + s).casefold() in taken for s in suffixes):
            k += 1
            name = f"{path.stem}_{k}"
        taken.update((name + s).casefold() for s in suffixes)
        names.append(name)
    return names


@torch.no_grad()
def predict_detection(
    model: nn.Module,
    paths: Sequence[Path],
    out_dir: Path,
    classes: Sequence[str],
    device: torch.device,
    score_thresh: float = 0.5,
) -> list[dict[str, Any]]:
    """Detects objects in each image, draws them to `out_dir/NAME.png` (`output_names`) and returns the kept
    detections.
    """
    model = optimize_for_inference(model.to(device))
    records = []
    for path, name in zip(progress(paths, desc="predict"), output_names(paths)):
        image = load_rgb(path)
        (output,) = model([to_tensor(image).to(device)])
        keep = output["scores"] >= score_thresh
        out = {k: v[keep].cpu() for k, v in output.items()}
        masks = (out["masks"][:, 0] > 0.5).numpy() if "masks" in out else None  # (N, 1, H, W) -> (N, H, W)
        png = draw_detections(
            image,
            out["boxes"].numpy(),
            out["labels"].numpy(),
            out["scores"].numpy(),
            classes,
            out_dir / f"{name}.png",
            masks,
        )
        records.append(
            dict(
                image=str(path),
                drawing=str(png),
                boxes=out["boxes"].tolist(),
                scores=out["scores"].tolist(),
                labels=[classes[i - 1] for i in out["labels"].tolist()],
            )
        )
    return records


@torch.no_grad()
def predict_segmentation(
    model: nn.Module, paths: Sequence[Path], out_dir: Path, classes: Sequence[str], size: int, device: torch.device
) -> list[dict[str, Any]]:
    """Segments each image; writes the class-id mask `NAME_mask.png` and the overlay `NAME.png` (`output_names`)."""
    model = optimize_for_inference(model.to(device))
    records = []
    for path, name in zip(progress(paths, desc="predict"), output_names(paths, ("", "_mask"))):
        image = load_rgb(path)
        x = resize_short_side(to_tensor(image), size, "bilinear")
        logits = F.interpolate(model(x[None].to(device)), size=image.shape[:2], mode="bilinear", align_corners=False)
        prediction = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        mask_png = out_dir / f"{name}_mask.png"
        Image.fromarray(prediction).save(mask_png)
        png = draw_segmentation(image, prediction, classes, out_dir / f"{name}.png")
        counts = np.bincount(prediction.ravel(), minlength=len(classes) + 1)
        records.append(
            dict(
                image=str(path),
                drawing=str(png),
                mask=str(mask_png),
                pixels={n: int(c) for n, c in zip(["background", *classes], counts)},
            )
        )
    return records


def save_run(out_dir: Path, model: nn.Module, config: dict[str, Any]) -> None:
    """Saves weights as safetensors, then the config that rebuilds the model and marks the run finished (each
    atomically)."""
    save_safetensors(model.state_dict(), out_dir / "model.safetensors")
    atomic_write_json(out_dir / "config.json", config)


def load_weights(model: nn.Module, run_dir: Path) -> nn.Module:
    """Loads `run_dir/model.safetensors` into a model rebuilt from the run's config."""
    path = run_dir / "model.safetensors"
    if not path.is_file():
        raise MissingFileError(f"{path} not found; pass a folder written by `train` as --run")
    load_model(model, str(path))
    return model
