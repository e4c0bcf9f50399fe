"""`fastvits train`: assemble data, model, optimiser, schedule, EMA and checkpoints from timm's parts, then loop.

Files of a run folder (`--output`; only rank 0 writes):
    run.json                   model name/kwargs, classes, data config, recipe and options: rebuilds the model
    checkpoints/step-*.pt      training state for `--resume` (the newest `--keep-checkpoints` are kept)
    model.safetensors          weights after the latest epoch (and model_ema.safetensors with EMA), stamped with
                               the global step of their checkpoint
    steps.csv                  loss and lr of every optimizer step
    metrics.csv, metrics.json  one row per epoch: train/eval loss, top-1/top-5, throughput
    loss.png, accuracy.png     the curves
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from ..checkpoint import save_safetensors
from . import checkpoint as ckpt
from .data import (
    check_classes,
    check_images,
    class_names,
    eval_transform,
    open_dataset,
    parse_data,
    resolve_input_config,
    train_transform,
)
from .distributed import (
    DistInfo,
    all_gather_objects,
    cleanup,
    init_distributed,
    kept_num_threads,
    share_cpus,
    unused_parameters,
)
from .engine import StepResult, TrainParts, current_lr, evaluate, train_one_epoch
from .errors import CheckpointError, DivergenceError, TrainError
from .files import atomic_write_json, remove_stale_temporaries, require_writable_folder
from .metrics import MetricsLog
from .modeling import RUN_FILE, WEIGHTS, ModelSpec, build_model
from .options import TrainOptions
from .recipe import scaled_lr
from .resume import check_resume, run_record
from .sampling import SeededDataset, ShardSampler, TrainSampler

__all__ = ["AMP_DTYPES", "default_preset", "run_training"]

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_preset(data: str) -> str:
    """The preset used when none is named: the short CPU recipe for Fashion-MNIST, FasterViT's otherwise."""
    return "fashion-mnist" if parse_data(data).kind == "fashion-mnist" else "fastervit"


@kept_num_threads()
def run_training(opts: TrainOptions) -> dict[str, Any]:
    """Train as `opts` says (one process, or one rank of a `torchrun` job). Returns the last epoch's metrics."""
    dist_info = init_distributed(opts.device)
    try:
        return _Trainer(opts, dist_info).run()
    finally:
        cleanup()


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _exported_step(path: Path) -> int | None:
    """The global step stamped in an exported weights file; None if it is missing, unreadable or not stamped."""
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            step = (f.metadata() or {}).get("global_step")
    except (OSError, safetensors.SafetensorError):
        return None
    return int(step) if step is not None else None


class _Trainer:
    """One training run; `__init__` builds everything, `run` loops over epochs."""

    def __init__(self, opts: TrainOptions, dist_info: DistInfo) -> None:
        self.opts, self.dist = opts, dist_info
        self.recipe = opts.recipe
        self.source = parse_data(opts.data, opts.train_split, opts.val_split)
        self.out = opts.output or Path("runs") / f"{opts.model}-{self.source.name}"
        self.ckpt_dir = self.out / "checkpoints"
        if dist_info.is_main:
            require_writable_folder(self.out, "--output")
        self.resume_path = self._resume_path()
        self.amp_dtype = self._amp_dtype()
        self.step_size = opts.batch_size * dist_info.world_size * opts.accum_steps
        classes = class_names(self.source)
        self.record = run_record(opts, classes)
        resumed = self._resume_state()  # checked before anything is built, so a wrong resume fails fast
        self.workers, self.threads = share_cpus(dist_info.world_size, opts.workers, opts.threads)
        _seed_everything(opts.seed + dist_info.rank)  # before model init; ranks differ for drop path and mixup

        self.model = build_model(opts.model, num_classes=len(classes), checkpoint=opts.checkpoint,
                                 pretrained=opts.pretrained, drop_path_rate=self.recipe.drop_path,
                                 **opts.model_kwargs)
        self.data_config = resolve_input_config(self.model, self.source, opts.img_size)
        self.spec = ModelSpec(name=opts.model, num_classes=len(classes), class_names=classes,
                              kwargs=opts.model_kwargs, data_config=self.data_config)
        self._prepare_model()
        self._build_data()
        self.parts = self._build_parts()
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        # what this process trains: a resumed run starts after its checkpoint (the final message says both)
        self.steps_trained = 0
        self.first_trained_step: int | None = None
        self._rng_state: dict[str, Any] | None = None  # this rank's RNG streams from the checkpoint
        if resumed is not None:
            self._load(resumed)
        self.metrics = MetricsLog(self.out, self.dist.is_main, self.global_step if self.resume_path else None)

    # --- setup -------------------------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

    def _resume_path(self) -> Path | None:
        existing = ckpt.list_checkpoints(self.ckpt_dir)
        if self.opts.resume is None:
            if existing:
                raise TrainError(f"{self.out} already holds checkpoints of an earlier run; continue it with "
                                 "--resume, or choose another --output folder")
            return None
        if self.opts.resume != "latest":
            return Path(self.opts.resume)
        if not existing:
            raise CheckpointError(f"--resume: no checkpoint in {self.ckpt_dir}; is --output the run's folder?")
        return existing[-1]

    def _resume_state(self) -> dict[str, Any] | None:
        """The checkpoint to continue from, if any, checked against this run (see `resume.check_resume`)."""
        if self.resume_path is None:
            return None
        state = ckpt.load_checkpoint(self.resume_path)
        check_resume(self.resume_path, state, self.record, self.step_size)
        return state

    def _amp_dtype(self) -> torch.dtype | None:
        dtype = AMP_DTYPES[self.opts.amp]
        if dtype is torch.float16 and self.dist.device.type != "cuda":
            raise TrainError("--amp fp16 needs a GPU (its loss scaling is CUDA-only); use --amp bf16 on CPU")
        return dtype

    def _prepare_model(self) -> None:
        opts, model = self.opts, self.model
        if opts.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise TrainError(f"{opts.model} does not support --grad-checkpointing (no set_grad_checkpointing)")
            model.set_grad_checkpointing(True)
        model.to(self.dist.device)
        if opts.channels_last:
            model.to(memory_format=torch.channels_last)

    def _build_data(self) -> None:
        opts, dist_info = self.opts, self.dist
        if opts.check_data:
            checked = check_images(self.source, ("train", "val"), dist_info.rank, dist_info.world_size)
            self._say(f"--check-data: all {checked} images decode fine")
        check_classes(self.source, "val", self.spec.class_names, "the training split")
        train_set = open_dataset(self.source, "train", train_transform(self.data_config, self.recipe),
                                 opts.train_samples)
        val_set = open_dataset(self.source, "val", eval_transform(self.data_config), opts.val_samples)
        self.sampler = TrainSampler(len(train_set), self.step_size, dist_info.rank, dist_info.world_size, opts.seed)
        if self.sampler.steps_per_epoch == 0:
            raise TrainError(f"the training set has {len(train_set)} images, fewer than one optimizer step "
                             f"({self.step_size} = batch x processes x accumulation); lower --batch-size")
        # the loaders get their own generator, so creating an iterator never draws from the global RNG
        common = dict(num_workers=self.workers, persistent_workers=self.workers > 0,
                      pin_memory=dist_info.device.type == "cuda", generator=torch.Generator().manual_seed(opts.seed))
        self.train_loader = DataLoader(SeededDataset(train_set), batch_size=opts.batch_size, sampler=self.sampler,
                                       **common)
        self.val_loader = DataLoader(val_set, batch_size=opts.eval_batch_size or 2 * opts.batch_size,
                                     sampler=ShardSampler(len(val_set), dist_info.rank, dist_info.world_size),
                                     **common)
        self.train_size, self.val_size = len(train_set), len(val_set)

    def _build_parts(self) -> TrainParts:
        opts, recipe, model = self.opts, self.recipe, self.model
        self.lr = opts.lr if opts.lr is not None else scaled_lr(recipe, self.step_size)
        optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=self.lr, weight_decay=recipe.weight_decay,
                                        layer_decay=recipe.layer_decay)
        scheduler, self.total_epochs = create_scheduler_v2(
            optimizer, sched="cosine", num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
            cooldown_epochs=recipe.cooldown_epochs, warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr,
            step_on_epochs=False, updates_per_epoch=self.sampler.steps_per_epoch,
        )
        mixup = None
        if recipe.mixup > 0 or recipe.cutmix > 0:
            if opts.batch_size % 2:
                raise TrainError(f"mixup/cutmix pair images within a batch: --batch-size must be even, "
                                 f"got {opts.batch_size}")
            mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                          switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.smoothing,
                          num_classes=self.spec.num_classes)
            loss_fn: nn.Module = SoftTargetCrossEntropy()
        elif recipe.smoothing > 0:
            loss_fn = LabelSmoothingCrossEntropy(recipe.smoothing)
        else:
            loss_fn = nn.CrossEntropyLoss()
        ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay is not None else None
        ddp = None
        forward_model: nn.Module = model
        if self.dist.distributed:
            ddp = forward_model = self._ddp(model)
        if opts.compile:
            forward_model = torch.compile(forward_model)
        return TrainParts(
            model=model, forward_model=forward_model, optimizer=optimizer, scheduler=scheduler,
            scaler=torch.amp.GradScaler(self.dist.device.type, enabled=self.amp_dtype is torch.float16),
            loss_fn=loss_fn.to(self.dist.device), device=self.dist.device, ddp=ddp, ema=ema, mixup=mixup,
            autocast_dtype=self.amp_dtype, accum_steps=opts.accum_steps, clip_grad=recipe.clip_grad,
            channels_last=opts.channels_last,
        )

    def _ddp(self, model: nn.Module) -> nn.parallel.DistributedDataParallel:
        """Wrap for several processes. DDP looks for parameters without a gradient, at the cost of a walk over the
        graph every step, only when the model has some at the training input size (see `unused_parameters`)."""
        input_size = self.data_config["input_size"]
        unused = unused_parameters(model, input_size, self.dist.device)
        if unused:
            self._say(f"{len(unused)} parameter tensors get no gradient at input {input_size} (e.g. {unused[0]}), "
                      "so DDP looks for unused parameters in every step")
        device_ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=bool(unused))

    # --- checkpoints -------------------------------------------------------------------------------------------

    def _save(self, epoch: int, step_in_epoch: int) -> None:
        """Write a training checkpoint (collective: every rank contributes its RNG state; rank 0 writes).

        At an epoch end (`step_in_epoch` 0) the weights are exported first. A kill between the two writes then leaves
        the previous checkpoint, and resuming trains the epoch again and rewrites both; in the other order a finished
        run could be left without its weights, or with those of an earlier epoch.

        Raises:
            DivergenceError: an optimizer step made the weights non-finite (a finite loss does not rule that
                out), so this state must not replace the last good checkpoint.
        """
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise DivergenceError(f"the weights became non-finite at global step {self.global_step}")
        rng = all_gather_objects(ckpt.capture_rng())
        if not self.dist.is_main:
            return
        if step_in_epoch == 0:
            self._export_weights()
        parts = self.parts
        state = {
            "model": self.model.state_dict(),
            "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": rng,
            "progress": {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
                         "step_size": self.step_size, "world_size": self.dist.world_size},
            "run": self.record,
        }
        ckpt.save_checkpoint(ckpt.checkpoint_path(self.ckpt_dir, self.global_step), state)
        ckpt.prune_checkpoints(self.ckpt_dir, self.opts.keep_checkpoints)

    def _export_weights(self) -> None:
        """model.safetensors (and model_ema.safetensors), stamped with the global step of their checkpoint."""
        metadata = {"global_step": str(self.global_step)}
        save_safetensors(self.model.state_dict(), self.out / WEIGHTS["model"], metadata)
        if self.parts.ema is not None:
            save_safetensors(self.parts.ema.module.state_dict(), self.out / WEIGHTS["ema"], metadata)

    def _refresh_weights(self) -> None:
        """After a resume at an epoch end, make the exported weights those of the checkpoint (rank 0).

        They can be missing (deleted, or `--resume FILE` of another folder's run), or be of another step (a kill
        between the two writes of `_save`). This matters most for a finished run, which trains no further epoch.
        """
        files = [self.out / WEIGHTS["model"]] + ([self.out / WEIGHTS["ema"]] if self.parts.ema is not None else [])
        if all(_exported_step(path) == self.global_step for path in files):
            return
        self._export_weights()
        self._say(f"exported the weights of {self.resume_path} again: {files[0]} was missing or of another step")

    def _load(self, state: dict[str, Any]) -> None:
        path, progress, parts = self.resume_path, state["progress"], self.parts
        self.model.load_state_dict(state["model"])
        if parts.ema is not None:
            parts.ema.module.load_state_dict(state["ema"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        parts.scaler.load_state_dict(state["scaler"])
        if progress["world_size"] == self.dist.world_size:
            self._rng_state = state["rng"][self.dist.rank]
        else:
            self._say(f"warning: {path} was written by {progress['world_size']} processes, this run has "
                      f"{self.dist.world_size}; data order is unchanged but dropout and mixup draws differ")
        self.start_epoch, self.start_step = progress["epoch"], progress["step_in_epoch"]
        self.global_step = progress["global_step"]
        self._say(f"resumed from {path}: epoch {self.start_epoch}, step {self.start_step} of the epoch, global step "
                  f"{self.global_step}")

    # --- loop --------------------------------------------------------------------------------------------------

    def _after_step(self, result: StepResult) -> None:
        self.global_step = result.global_step
        self.steps_trained += 1
        if self.first_trained_step is None:
            self.first_trained_step = result.global_step
        self.metrics.log_step(result)
        every = self.opts.save_every
        if every and result.global_step % every == 0 and result.step_in_epoch < self.sampler.steps_per_epoch:
            self._save(result.epoch, result.step_in_epoch)

    def _write_run_file(self) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.ckpt_dir)
        options = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self.opts).items()
                   if k != "recipe"}
        atomic_write_json(self.out / RUN_FILE, {
            "model": self.spec.to_dict(), "recipe": dataclasses.asdict(self.recipe), "options": options,
            "world_size": self.dist.world_size, "global_batch": self.step_size, "lr": self.lr,
        })

    def _end_epoch(self, epoch: int, seconds: float, steps: int) -> dict[str, Any]:
        kwargs = dict(device=self.dist.device, autocast_dtype=self.amp_dtype, channels_last=self.opts.channels_last,
                      progress=self.opts.progress and self.dist.is_main)
        result = evaluate(self.model, self.val_loader, desc=f"eval {epoch}", **kwargs)
        row: dict[str, Any] = {
            "epoch": epoch, "global_step": self.global_step, "lr": current_lr(self.parts.optimizer),
            "train_loss": self.metrics.epoch_train_loss(epoch), "eval_loss": result["loss"],
            "eval_top1": result["top1"], "eval_top5": result["top5"], "epoch_seconds": seconds,
            "train_samples_per_sec": steps * self.step_size / max(seconds, 1e-9),
            "eval_samples_per_sec": result["samples_per_sec"],
        }
        if self.parts.ema is not None:
            ema = evaluate(self.parts.ema.module, self.val_loader, desc=f"eval EMA {epoch}", **kwargs)
            row.update(ema_eval_loss=ema["loss"], ema_eval_top1=ema["top1"], ema_eval_top5=ema["top5"])
        self.metrics.log_epoch(row)
        self._save(epoch + 1, 0)  # also exports the weights, unless they became non-finite
        ema_text = f", EMA top-1 {row['ema_eval_top1']:.2f}%" if self.parts.ema is not None else ""
        self._say(f"epoch {epoch + 1}/{self.total_epochs}: train loss {row['train_loss']:.4f}, "
                  f"eval loss {row['eval_loss']:.4f}, top-1 {row['eval_top1']:.2f}%, top-5 {row['eval_top5']:.2f}%"
                  f"{ema_text} ({seconds:.0f} s, {row['train_samples_per_sec']:.0f} img/s)")
        return row

    def run(self) -> dict[str, Any]:
        self._write_run_file()
        if self.resume_path is not None and self.start_step == 0 and self.dist.is_main:
            self._refresh_weights()
        self._say(f"training {self.opts.model} on {self.source.name} ({self.train_size} train / {self.val_size} "
                  f"eval images, {len(self.spec.class_names)} classes, input {self.data_config['input_size']}): "
                  f"{self._epochs_text()} x {self.sampler.steps_per_epoch} steps, global batch "
                  f"{self.step_size}, lr {self.lr:.3g}, {self.dist.world_size} process(es) on {self.dist.device} "
                  f"({self.threads} compute thread(s) each); "
                  f"output in {self.out}")
        if self._rng_state is not None:
            ckpt.restore_rng(self._rng_state)  # last, so nothing in the setup can disturb the restored streams
        row: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, self.total_epochs):
                start_step = self.start_step if epoch == self.start_epoch else 0
                self.sampler.set_epoch(epoch, start_step)
                started = time.perf_counter()
                train_one_epoch(self.parts, self.train_loader, epoch, start_step, self.global_step,
                                self._after_step, progress=self.opts.progress and self.dist.is_main)
                row = self._end_epoch(epoch, time.perf_counter() - started,
                                      self.sampler.steps_per_epoch - start_step)
        except DivergenceError as e:
            raise DivergenceError(f"{e}. Training stopped; {self._last_good()}") from None
        finally:
            self.metrics.close()
        trained = (f"global steps {self.first_trained_step}-{self.global_step}" if self.steps_trained
                   else "no step left to train")
        self._say(f"done ({self.steps_trained} optimizer steps in this process: {trained}): "
                  f"weights {self.out / WEIGHTS['model']}, metrics {self.out / 'metrics.csv'}, "
                  f"plots {self.out / 'accuracy.png'} and {self.out / 'loss.png'}")
        return {**row, "output": str(self.out)}

    def _epochs_text(self) -> str:
        """The number of epochs, cooldown included: `--epochs 2` of the fastervit preset trains 12."""
        cooldown = self.recipe.cooldown_epochs
        breakdown = f" ({self.recipe.epochs} + {cooldown} cooldown at the minimum lr)" if cooldown else ""
        return f"{self.total_epochs} epochs{breakdown}"

    def _last_good(self) -> str:
        existing = ckpt.list_checkpoints(self.ckpt_dir)
        advice = "lower the learning rate (--lr-base or --lr), keep --clip-grad on, or prefer --amp bf16 to fp16"
        if not existing:
            return f"no checkpoint had been written yet. Restart with a fix: {advice}"
        return (f"the last good checkpoint is {existing[-1]}. Fix the cause ({advice}) and continue with "
                f"--resume {existing[-1]}")
