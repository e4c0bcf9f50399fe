"""Whole training runs as users start them: torchrun equivalence, SIGKILL and resume, divergence, what a resume
must keep, and the order of the files written at an epoch end.

Runs go through subprocesses with one compute thread each, so they are deterministic and kill-able; the image data
is a tiny synthetic ImageFolder and the model timm's `test_vit` (LayerNorm only, so batch statistics cannot
differ between one and two processes).
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_train_cli import TINY_FASTERVIT, TINY_FASTERVIT_KWARGS
from test_train_data import make_image_folder

import fastvits.train.checkpoint
from fastvits.cli import main
from fastvits.train.checkpoint import list_checkpoints, load_checkpoint
from fastvits.train.distributed import unused_parameters

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--model", "test_vit", "--img-size", "32", "--no-progress", "--seed", "0", "--threads", "1"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def _start(args: list[str], log: Path, nproc: int = 1) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "fastvits.cli", "train", *TINY, *args]
    return subprocess.Popen(cmd, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]


def _losses(run: Path) -> list[tuple[int, str]]:
    with open(run / "steps.csv") as f:
        return [(int(r["global_step"]), r["loss"]) for r in csv.DictReader(f)]


def test_two_processes_match_one_process_and_accumulation(tmp_path):
    """Same global batch of 8: 1 process x 8, torchrun 2 processes x 4, and 1 process x 4 x 2 accumulation.

    SGD, not AdamW: the attention key bias has a true gradient of zero (softmax ignores a constant shift), so
    its gradient is rounding noise, which Adam's normalisation turns into full-size steps that differ between
    any two summation orders.
    """
    data = make_image_folder(tmp_path / "data", classes=3, train=16, val=4)
    common = ["--data", str(data), "--preset", "plain", "--epochs", "2", "--opt", "sgd", "--lr", "0.05",
              "--workers", "0"]
    runs = {
        "single": (["-b", "8"], 1),
        "ddp": (["-b", "4"], 2),
        "accum": (["-b", "4", "--accum-steps", "2"], 1),
    }
    procs = {name: _start([*common, *extra, "--output", str(tmp_path / name)], tmp_path / f"{name}.log", nproc)
             for name, (extra, nproc) in runs.items()}
    for name, proc in procs.items():
        _finish(proc, tmp_path / f"{name}.log")
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in runs}
    torch.manual_seed(0)
    init = timm.create_model("test_vit", num_classes=3).state_dict()
    for key, value in weights["single"].items():
        for other in ("ddp", "accum"):
            torch.testing.assert_close(weights[other][key], value, atol=2e-5, rtol=1e-4, msg=f"{other}: {key}")
    assert max((weights["single"][k] - init[k]).abs().max().item() for k in init) > 1e-2  # training moved them
    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 12
    np.testing.assert_allclose([float(v) for _, v in ddp], [float(v) for _, v in single], rtol=1e-4)


def test_sigkill_mid_epoch_then_resume_gives_the_same_losses(tmp_path):
    """Augmentation, mixup/cutmix, drop path and EMA all on; the killed run loads data in a worker process."""
    data = make_image_folder(tmp_path / "data", classes=3, train=32, val=4)
    common = ["--data", str(data), "--preset", "fashion-mnist", "--epochs", "2", "--warmup-epochs", "0.5",
              "--mixup", "0.8", "--cutmix", "1.0", "--drop-path", "0.1", "--ema-decay", "0.9", "-b", "4",
              "--save-every", "2"]
    reference = _start([*common, "--workers", "0", "--output", str(tmp_path / "ref")], tmp_path / "ref.log")
    killed_run = tmp_path / "killed"
    victim = _start([*common, "--workers", "1", "--output", str(killed_run)], tmp_path / "killed.log")
    deadline = time.monotonic() + 180
    while len(_losses(killed_run) if (killed_run / "steps.csv").is_file() else []) < 7:
        assert victim.poll() is None, "ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()
        assert time.monotonic() < deadline, "the run did not reach step 7 in time"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    latest = list_checkpoints(killed_run / "checkpoints")[-1]
    progress = load_checkpoint(latest)["progress"]
    assert progress["epoch"] == 0 and 0 < progress["step_in_epoch"] < 24  # really mid-epoch
    resumed = _start([*common, "--workers", "1", "--output", str(killed_run), "--resume"], tmp_path / "resume.log")
    _finish(resumed, tmp_path / "resume.log")
    _finish(reference, tmp_path / "ref.log")
    assert "resumed from" in (tmp_path / "resume.log").read_text()
    assert _losses(killed_run) == _losses(tmp_path / "ref")  # every step, bit for bit (as printed)
    assert len(_losses(killed_run)) == 48
    ref_w, res_w = (load_file(str(p / "model_ema.safetensors")) for p in (tmp_path / "ref", killed_run))
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path, capsys):
    """lr 1e30: the first update scales the weights to ~1e30 and the loss of step 2 overflows to NaN."""
    data = make_image_folder(tmp_path / "data", classes=3, train=8, val=2)
    out = tmp_path / "run"
    code = main(["train", *TINY, "--data", str(data), "--preset", "plain", "--epochs", "3", "-b", "4",
                 "--workers", "0", "--lr", "1e30", "--weight-decay", "0", "--save-every", "1", "--output", str(out)])
    err = capsys.readouterr().err
    checkpoints = list_checkpoints(out / "checkpoints")
    assert code == 2 and "the loss became nan at epoch 0, step 2" in err and "Training stopped" in err
    assert f"last good checkpoint is {checkpoints[-1]}" in err and f"--resume {checkpoints[-1]}" in err
    state = load_checkpoint(checkpoints[-1])  # intact, loadable and finite
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_non_finite_weights_are_never_checkpointed(tmp_path, capsys, monkeypatch):
    """A step can overflow the weights while its loss was finite: the checkpoint after it is refused."""
    original = torch.optim.AdamW.step

    def overflowing_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    data = make_image_folder(tmp_path / "data", classes=3, train=8, val=2)
    out = tmp_path / "run"
    code = main(["train", *TINY, "--data", str(data), "--preset", "plain", "-b", "4", "--workers", "0",
                 "--save-every", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "weights became non-finite at global step 1" in err
    assert "no checkpoint had been written yet" in err and list_checkpoints(out / "checkpoints") == []


def test_existing_run_needs_resume(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=2, train=4, val=2)
    args = ["train", *TINY, "--data", str(data), "--preset", "plain", "-b", "4", "--workers", "0",
            "--output", str(tmp_path / "run")]
    assert main(args) == 0
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # a finished run resumes to nothing


def test_unused_parameters_are_found_without_changing_the_model():
    """At 32 px the tiny FasterViT's stages 3 and 4 hold one window each: their carrier-token attention is unused."""
    torch.manual_seed(0)
    model = timm.create_model("fastervit_0_any_res", num_classes=3, **TINY_FASTERVIT_KWARGS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    unused = unused_parameters(model, (3, 32, 32), torch.device("cpu"))
    assert any(".hat_" in name for name in unused) and all(name.startswith("levels.2.") for name in unused)
    assert unused_parameters(model, (3, 128, 128), torch.device("cpu")) == []  # several windows: all train
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(torch.get_rng_state(), rng) and all(p.grad is None for p in model.parameters())


def test_two_processes_train_a_model_with_unused_parameters(tmp_path):
    """DDP fails in the second step unless told about parameters without gradient; they stay untouched, as in
    one process (AdamW's weight decay skips parameters without gradient)."""
    data = make_image_folder(tmp_path / "data", classes=3, train=6, val=1)  # 2 steps of 2 processes x 2 x 2
    log = tmp_path / "ddp.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fastvits.cli",
         "train", *TINY_FASTERVIT, "--data", str(data), "--img-size", "32", "--preset", "plain", "-b", "2",
         "--accum-steps", "2", "--workers", "0", "--no-progress", "--output", str(tmp_path / "run")],
        env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
    _finish(proc, log)
    assert "DDP looks for unused parameters" in log.read_text()
    torch.manual_seed(0)
    model = timm.create_model("fastervit_0_any_res", num_classes=3, drop_path_rate=0.0, **TINY_FASTERVIT_KWARGS)
    init = model.state_dict()
    trained = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(trained[k], init[k]) for k in unused_parameters(model, (3, 32, 32), torch.device("cpu")))
    assert not torch.equal(trained["head.weight"], init["head.weight"])


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, "--data", str(data), "--preset", "plain", "-b", "4", "--workers", "0",
            "--output", str(out), *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch run of 2 classes; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("finished")
    data = make_image_folder(root / "data", classes=2, train=4, val=1)
    assert main(_train_args(data, root / "run", "--epochs", "2")) == 0
    return data, root / "run"


def test_resume_refuses_changed_settings(finished_run, capsys):
    data, out = finished_run
    run_file = (out / "run.json").read_bytes()
    assert main([*_train_args(data, out, "--epochs", "3", "--lr", "0.01", "--train-samples", "2"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 2 -> 3" in err and "--lr none -> 0.01" in err and "--train-samples none -> 2" in err
    assert "--resume continues a run with its own settings" in err and "another --output" in err
    assert len(err.splitlines()) == 1 and (out / "run.json").read_bytes() == run_file


def _rewind(run: Path) -> Path:
    """Deletes the newest checkpoint of a finished 2-epoch run, so that `--resume` trains epoch 2 again from the end
    of epoch 1; returns the checkpoint it will resume from."""
    *older, newest = list_checkpoints(run / "checkpoints")
    newest.unlink()
    assert load_checkpoint(older[-1])["progress"]["epoch"] == 1
    return older[-1]


def _assert_same_result(run: Path, reference: Path) -> None:
    """Every step's loss (as printed) and the final weights are those of the reference run, bit for bit."""
    assert _losses(run) == _losses(reference) and len(_losses(run)) == 4  # 2 epochs of 2 x 4 images, batch 4
    weights, expected = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)


def test_resume_accepts_changed_settings_that_keep_the_result(finished_run, tmp_path, capsys):
    data, out = finished_run
    run = shutil.copytree(out, tmp_path / "run")
    start = _rewind(run)
    assert main([*_train_args(data, run, "--epochs", "2"), "--resume", "--save-every", "1", "--keep-checkpoints", "3",
                 "--eval-batch-size", "1", "--check-data", "--device", "cpu"]) == 0
    assert f"resumed from {start}: epoch 1, step 0 of the epoch" in capsys.readouterr().out
    _assert_same_result(run, out)


def test_resume_accepts_the_same_data_and_weights_under_another_spelling(tmp_path, monkeypatch, capsys):
    """Paths are compared as the files they name: a resume from another working directory, or with an absolute
    path where the run had a relative one, continues the run."""
    make_image_folder(tmp_path / "data", classes=2, train=4, val=1)
    weights = tmp_path / "init.safetensors"
    fastvits.save_safetensors(timm.create_model("test_vit", num_classes=2).state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    run = ["--checkpoint", "init.safetensors"]
    assert main([*_train_args(Path("data"), tmp_path / "run", "--epochs", "2"), *run]) == 0
    reference = shutil.copytree(tmp_path / "run", tmp_path / "reference")
    start = _rewind(tmp_path / "run")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "data")
    again = ["--checkpoint", str(weights)]
    assert main([*_train_args(Path("."), tmp_path / "run", "--epochs", "2"), *again, "--resume"]) == 0
    assert f"resumed from {start}: epoch 1, step 0 of the epoch" in capsys.readouterr().out
    _assert_same_result(tmp_path / "run", reference)


def test_version_1_checkpoints_resume(finished_run, tmp_path, monkeypatch, capsys):
    """Checkpoints of the first format (whose run record names the model only) still resume, to the same result."""
    data, out = finished_run
    run = shutil.copytree(out, tmp_path / "run")
    newest = _rewind(run)
    state = {k: v for k, v in load_checkpoint(newest).items() if k not in ("format", "version", "digest")}
    state["run"] = {"model": state["run"]["model"], "preset": "plain"}
    monkeypatch.setattr(fastvits.train.checkpoint, "VERSION", 1)
    fastvits.train.checkpoint.save_checkpoint(newest, state)
    monkeypatch.undo()
    assert load_checkpoint(newest)["version"] == 1
    assert main([*_train_args(data, run, "--epochs", "2"), "--resume"]) == 0
    assert f"resumed from {newest}: epoch 1, step 0 of the epoch" in capsys.readouterr().out
    _assert_same_result(run, out)


def test_resume_refuses_another_model_or_other_classes(finished_run, tmp_path, capsys):
    data, out = finished_run
    checkpoint = str(list_checkpoints(out / "checkpoints")[-1])
    other = tmp_path / "other"
    assert main([*_train_args(data, other, "--epochs", "2", "--model-kwargs", '{"depth": 2}'),
                 "--resume", checkpoint]) == 2
    err = capsys.readouterr().err
    assert f"{checkpoint} holds test_vit with 2 classes [class_0, class_1], but this run builds test_vit " \
           '{"depth": 2} with 2 classes' in err and len(err.splitlines()) == 1
    three = make_image_folder(tmp_path / "three", classes=3, train=4, val=1)
    assert main([*_train_args(three, other, "--epochs", "2"), "--resume", checkpoint]) == 2
    assert "this run builds test_vit with 3 classes [class_0, class_1, class_2]" in capsys.readouterr().err


def test_weights_are_exported_before_the_checkpoint(tmp_path, monkeypatch):
    """A kill between the two writes of an epoch end must not leave a checkpoint without its weights."""

    class Killed(Exception):
        pass

    def killed(path, state):
        raise Killed

    monkeypatch.setattr(fastvits.train.checkpoint, "save_checkpoint", killed)
    data = make_image_folder(tmp_path / "data", classes=2, train=4, val=1)
    with pytest.raises(Killed):
        main(_train_args(data, tmp_path / "run"))
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_resuming_a_finished_run_exports_missing_or_stale_weights(finished_run, tmp_path, capsys):
    data, out = finished_run
    run = shutil.copytree(out, tmp_path / "run")
    final = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["model"]
    weights = run / "model.safetensors"
    stale = {k: torch.zeros_like(v) for k, v in final.items()}
    for damage in (weights.unlink, lambda: save_file(stale, str(weights))):
        damage()
        assert main([*_train_args(data, run, "--epochs", "2"), "--resume"]) == 0
        assert "exported the weights" in capsys.readouterr().out
        assert all(torch.equal(v, final[k]) for k, v in load_file(str(weights)).items())


def test_training_restores_the_thread_count_and_counts_cooldown_epochs(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=2, train=4, val=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # the run uses --threads 1
    try:
        assert main(_train_args(data, tmp_path / "run", "--epochs", "1", "--cooldown-epochs", "1")) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "2 epochs (1 + 1 cooldown at the minimum lr) x 2 steps" in out and "epoch 2/2" in out
