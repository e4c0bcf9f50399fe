"""Whole training runs of the two model families the library trains, where test_train_runs.py uses timm's `test_vit`.

`test_vit` has LayerNorm only, so those runs would pass on a trainer that loses BatchNorm statistics, and it has no
carrier tokens, no parameters without gradient and no deformable convolution. Here a small FasterViT and a small
LITv2 are killed and resumed, and trained by one process and by two (`torchrun`):

* FasterViT at 48x48 px: BatchNorm in the stem, the conv stages and the final norm (a LayerNorm in the two-process
  test, see `DDP_KWARGS`); stage 3 (a 3x3 map, padded to 4x4, in 2x2 windows) runs carrier tokens; stage 4 (2x2)
  fits in one window, so its carrier-token attention gets no gradient and DDP needs `find_unused_parameters`.
* LITv2 at 64x64 px: deformable token merging (a deformable conv, then BatchNorm) between the stages, 2x2 HiLo
  windows in stage 3 and global attention in stage 4; every parameter gets a gradient.

Runs are subprocesses with one compute thread each (deterministic); the data is a tiny synthetic ImageFolder.
"""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from test_train_data import make_image_folder
from test_train_runs import _env, _finish, _losses

from fastvits.train.checkpoint import list_checkpoints, load_checkpoint
from fastvits.train.distributed import unused_parameters

FASTERVIT_KWARGS = {"dim": 8, "in_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                    "window_size": [2, 2, 2, 2], "ct_size": 1, "hat": [False, False, True, True]}
LITV2_KWARGS = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4]}
MODELS = {  # name, constructor arguments, (H, W) of the training input
    "fastervit": ("fastervit_0_any_res", FASTERVIT_KWARGS, (48, 48)),
    "litv2": ("litv2_s", LITV2_KWARGS, (64, 64)),
}
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")

# The killed run SIGKILLs itself right after logging the given global step, before that step's checkpoint is
# written: at ~10 ms a step a kill from outside would land at a random step (or after the epoch); this is
# deterministic and leaves a logged step that the resume must train again.
_DIE_AFTER_STEP = """
import os, signal, sys
from fastvits.cli import main
from fastvits.train.metrics import MetricsLog
die_after, log_step = int(sys.argv[1]), MetricsLog.log_step
def log_step_then_die(self, result):
    log_step(self, result)
    if result.global_step == die_after:
        os.kill(os.getpid(), signal.SIGKILL)
MetricsLog.log_step = log_step_then_die
sys.exit(main(sys.argv[2:]))
"""


def _start(model: str, args: list[str], log: Path, nproc: int = 1, die_after: int | None = None,
           kwargs: dict[str, Any] | None = None) -> subprocess.Popen:
    """`fastvits train` of `model` (`kwargs` replacing its constructor arguments), logged to `log`."""
    name, default_kwargs, size = MODELS[model]
    kwargs = default_kwargs if kwargs is None else kwargs
    train = ["train", "--model", name, "--model-kwargs", json.dumps(kwargs), "--img-size", *map(str, size),
             "--no-progress", "--seed", "0", "--threads", "1", *args]
    if die_after is not None:
        cmd = [sys.executable, "-c", _DIE_AFTER_STEP, str(die_after), *train]
    elif nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "fastvits.cli", *train]
    else:
        cmd = [sys.executable, "-m", "fastvits.cli", *train]
    return subprocess.Popen(cmd, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _init_weights(model: str, kwargs: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The weights a run starts from: rank 0 seeds with --seed 0 before it builds the model (DDP copies them)."""
    name, default_kwargs, _ = MODELS[model]
    kwargs = default_kwargs if kwargs is None else kwargs
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=2, drop_path_rate=0.0, **kwargs).state_dict()


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Nested checkpoint values equal: tensors bit for bit (dtype and shape too), everything else by ==."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _epoch_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv without its timings (the only columns that may differ between two runs of the same training)."""
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k and "per_sec" not in k}
                for row in csv.DictReader(f)]


def test_the_models_exercise_batchnorm_carrier_tokens_unused_parameters_and_deformable_conv():
    """What the runs below rely on, checked on the models as built, so a change of configuration cannot make them
    trivial."""
    fastervit = timm.create_model(MODELS["fastervit"][0], num_classes=2, **FASTERVIT_KWARGS)
    unused = unused_parameters(fastervit, (3, *MODELS["fastervit"][2]), torch.device("cpu"))
    assert unused and all(n.startswith("levels.3.") and (".hat_" in n or "global_tokenizer" in n) for n in unused)
    stage3_ct = [n for n, _ in fastervit.named_parameters() if n.startswith("levels.2.") and ".hat_" in n]
    assert stage3_ct and not set(stage3_ct) & set(unused)  # stage 3 has 2x2 windows: its carrier tokens train
    litv2 = timm.create_model(MODELS["litv2"][0], num_classes=2, **LITV2_KWARGS)
    assert unused_parameters(litv2, (3, *MODELS["litv2"][2]), torch.device("cpu")) == []
    assert any(n.endswith("downsample.dconv.conv_offset.weight") for n, _ in litv2.named_parameters())
    for model in (fastervit, litv2):
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("model", sorted(MODELS))
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(model, tmp_path):
    """Killed after step 3 (the newest checkpoint is step 2, mid-epoch 0), resumed, and compared with a run that
    was never stopped: every step's loss, each epoch's eval and EMA eval loss (which use the BatchNorm running
    statistics), the exported weights and EMA weights with their BatchNorm statistics, and every checkpoint in full
    (model, EMA, optimizer, scheduler, scaler, RNG streams and the position in the data) bit for bit. The resumed
    process must say it starts at the checkpoint's step and train only the steps after it: a restart from scratch
    with the same seed would give the same losses and weights."""
    data = make_image_folder(tmp_path / "data", classes=2, train=12, val=2)  # 6 steps of 4 images per epoch
    common = ["--data", str(data), "--preset", "fashion-mnist", "--epochs", "2", "--warmup-epochs", "0.5",
              "--mixup", "0.8", "--cutmix", "1.0", "--drop-path", "0.1", "--ema-decay", "0.9", "-b", "4",
              "--save-every", "2", "--keep-checkpoints", "10"]
    ref_run, killed_run = tmp_path / "ref", tmp_path / "killed"
    reference = _start(model, [*common, "--workers", "0", "--output", str(ref_run)], tmp_path / "ref.log")
    victim = _start(model, [*common, "--workers", "1", "--output", str(killed_run)], tmp_path / "killed.log",
                    die_after=3)
    assert victim.wait(timeout=240) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    latest = list_checkpoints(killed_run / "checkpoints")[-1]
    assert load_checkpoint(latest)["progress"] == {"epoch": 0, "step_in_epoch": 2, "global_step": 2, "step_size": 4,
                                                   "world_size": 1}
    assert [step for step, _ in _losses(killed_run)] == [1, 2, 3]  # step 3 was logged, then lost
    resumed = _start(model, [*common, "--workers", "1", "--output", str(killed_run), "--resume"],
                     tmp_path / "resume.log")
    _finish(resumed, tmp_path / "resume.log")
    _finish(reference, tmp_path / "ref.log")

    log = (tmp_path / "resume.log").read_text()
    assert f"resumed from {latest}: epoch 0, step 2 of the epoch, global step 2\n" in log
    assert "done (10 optimizer steps in this process: global steps 3-12)" in log
    assert "done (12 optimizer steps in this process: global steps 1-12)" in (tmp_path / "ref.log").read_text()
    assert len(_losses(ref_run)) == 12 and _losses(killed_run) == _losses(ref_run)  # as printed, 10 digits
    assert _epoch_rows(killed_run) == _epoch_rows(ref_run)

    init = _init_weights(model)
    for file in ("model.safetensors", "model_ema.safetensors"):
        ref_w, res_w = load_file(str(ref_run / file)), load_file(str(killed_run / file))
        assert list(res_w) == list(ref_w)
        for key in ref_w:
            assert torch.equal(res_w[key], ref_w[key]), f"{file}: {key}"
        statistics = [k for k in ref_w if k.endswith(BN_STATISTICS)]
        assert statistics and all(not torch.equal(ref_w[k], init[k]) for k in statistics)  # they were trained
        # every step's forward counted, the killed process's 2 included (EMA copies the integer buffers)
        assert all(ref_w[k].item() == 12 for k in statistics if k.endswith("num_batches_tracked"))

    names = [p.name for p in list_checkpoints(ref_run / "checkpoints")]
    assert names == [f"step-{s:08d}.pt" for s in (2, 4, 6, 8, 10, 12)]
    assert [p.name for p in list_checkpoints(killed_run / "checkpoints")] == names
    for name in names:
        ref_state = load_checkpoint(ref_run / "checkpoints" / name)
        res_state = load_checkpoint(killed_run / "checkpoints" / name)
        assert {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "progress", "run"} <= set(ref_state)
        assert ref_state["optimizer"]["state"]  # AdamW moments, so the comparison below covers them
        _assert_same(res_state, ref_state, name)


# One image per micro-batch in the test below makes a final BatchNorm before global average pooling constant: it
# centres each channel of the one image's map, so the pooled features are its bias whatever the input, and nothing
# before it trains. FasterViT's official `layer_norm_last` keeps its stem and conv-stage BatchNorms and avoids that.
DDP_KWARGS = {"fastervit": {**FASTERVIT_KWARGS, "layer_norm_last": True}, "litv2": LITV2_KWARGS}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_two_processes_match_one_process(model, tmp_path):
    """Global batch 4 of one image per micro-batch: torchrun 2 processes x 2 accumulation steps against 1 process x
    4 accumulation steps, plain SGD (see test_train_runs.py for why not AdamW).

    One image per micro-batch because BatchNorm normalises over each process's micro-batch: the sampler deals rank r
    every other image of a global batch, so with several images per micro-batch no single-process run sees the
    same micro-batches as the ranks. With one, both runs take the gradients of the same four single-image batches
    and differ only in the order of summing them (all-reduce across ranks against sequential accumulation). That
    rounding (~1e-7 relative) stays below 2e-6 in the weights after 8 steps: the tolerances (those of
    test_train_runs.py) leave a factor of 10 to spare, while ranks that skip the gradient all-reduce end 0.1 off.
    LITv2 trains at 64x64 px: at 32x64 its last BatchNorm normalises two values per channel (a 1x2 map of one
    image), which amplifies the rounding until the runs part after 3 steps.
    The running statistics are per process by design (docs/training.md): rank 0's count only its own micro-batches.
    """
    kwargs = DDP_KWARGS[model]
    data = make_image_folder(tmp_path / "data", classes=2, train=8, val=2)  # 4 steps of 4 images per epoch
    common = ["--data", str(data), "--preset", "plain", "--epochs", "2", "--opt", "sgd", "--lr", "0.05",
              "--workers", "0", "-b", "1"]
    runs = {"single": (["--accum-steps", "4"], 1), "ddp": (["--accum-steps", "2"], 2)}
    procs = {name: _start(model, [*common, *extra, "--output", str(tmp_path / name)], tmp_path / f"{name}.log", n,
                          kwargs=kwargs)
             for name, (extra, n) in runs.items()}
    for name, proc in procs.items():
        _finish(proc, tmp_path / f"{name}.log")
    single, ddp = (load_file(str(tmp_path / name / "model.safetensors")) for name in runs)
    init = _init_weights(model, kwargs)
    parameters = [k for k in init if not k.endswith(BN_STATISTICS)]
    for key in parameters:
        torch.testing.assert_close(ddp[key], single[key], atol=2e-5, rtol=1e-4, msg=key)
    statistics = [k for k in init if k.endswith("num_batches_tracked")]
    assert statistics and all(single[k].item() == 8 * 4 and ddp[k].item() == 8 * 2 for k in statistics)
    single_losses, ddp_losses = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(ddp_losses) == len(single_losses) == 8
    np.testing.assert_allclose([float(v) for _, v in ddp_losses], [float(v) for _, v in single_losses], rtol=1e-4)

    ddp_log = (tmp_path / "ddp.log").read_text()
    if model == "fastervit":  # stage 4's carrier-token attention keeps its initial value, stage 3's trains
        assert "DDP looks for unused parameters" in ddp_log
        name, _, size = MODELS[model]
        torch.manual_seed(0)
        unused = unused_parameters(timm.create_model(name, num_classes=2, **kwargs), (3, *size), torch.device("cpu"))
        trained = [k for k in parameters if k.startswith("levels.2.") and k.endswith("weight")
                   and any(part in k for part in (".hat_attn.", ".hat_mlp.", ".global_tokenizer."))]
    else:  # every parameter trains, the deformable convs' offset predictors too (through bilinear sampling)
        assert "DDP looks for unused parameters" not in ddp_log
        unused, trained = [], [k for k in parameters if ".conv_offset." in k]
    assert trained and all(k in parameters for k in unused)
    for weights in (single, ddp):
        assert all(torch.equal(weights[k], init[k]) for k in unused)
        assert all((weights[k] - init[k]).abs().max() > 1e-4 for k in trained)
