"""`fastvits train`, `validate` and `predict` end to end, in-process, on a tiny FasterViT and tiny images."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_data import make_image_folder

from fastvits.cli import build_parser, main
from fastvits.train.cli import _recipe
from fastvits.train.recipe import PRESETS

TINY_FASTERVIT_KWARGS = dict(dim=16, in_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=[4, 4, 4, 4])
TINY_FASTERVIT = ["--model", "fastervit_0_any_res", "--model-kwargs", json.dumps(TINY_FASTERVIT_KWARGS),
                  "--threads", "1"]


def test_recipe_flags_override_the_preset():
    args = build_parser().parse_args(["train", "--model", "m", "--ema-decay", "none", "--scale", "0.5", "1",
                                      "--layer-decay", "0.7", "--epochs", "3", "--auto-augment", "none"])
    recipe = _recipe(args, "fastervit")
    assert recipe.ema_decay is None and recipe.scale == (0.5, 1.0) and recipe.layer_decay == 0.7
    assert recipe.epochs == 3 and recipe.auto_augment is None
    assert recipe.mixup == PRESETS["fastervit"].mixup  # untouched fields keep the preset's value


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-epoch run exercising most options: accumulation, layer decay, EMA, mixup, bf16, checkpointing."""
    root = tmp_path_factory.mktemp("train_cli")
    data = make_image_folder(root / "data", classes=3, train=8, val=4, size=(20, 24))
    out = root / "run"
    code = main(["train", *TINY_FASTERVIT, "--data", str(data), "--img-size", "32", "40", "--preset", "fastervit",
                 "--epochs", "2", "--warmup-epochs", "1", "--cooldown-epochs", "0", "-b", "4", "--accum-steps", "2",
                 "--lr", "1e-3", "--layer-decay", "0.8", "--ema-decay", "0.5", "--grad-checkpointing",
                 "--channels-last", "--amp", "bf16", "--workers", "0", "--no-progress", "--output", str(out)])
    assert code == 0
    return data, out


def test_train_writes_metrics_plots_and_weights(trained_run):
    _, out = trained_run
    for name in ("run.json", "model.safetensors", "model_ema.safetensors", "steps.csv", "metrics.csv",
                 "metrics.json", "loss.png", "accuracy.png"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [0, 1]
    assert {"train_loss", "eval_loss", "eval_top1", "eval_top5", "ema_eval_top1"} <= set(metrics["epochs"][0])
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["data_config"]["input_size"] == [3, 32, 40] and run["global_batch"] == 8
    assert run["recipe"]["layer_decay"] == 0.8 and len((out / "steps.csv").read_text().splitlines()) == 1 + 6


def test_validate_and_predict_from_the_run(trained_run, tmp_path, capsys):
    data, out = trained_run
    for extra in ([], ["--ema"]):
        result_file = tmp_path / "result.json"
        assert main(["validate", "--run", str(out), *extra, "--data", str(data), "--no-progress",
                     "--results-file", str(result_file)]) == 0
        row = json.loads(result_file.read_text())
        assert row["samples"] == 12 and 0 <= row["top1"] <= row["top5"] == 100.0 and row["samples_per_sec"] > 0
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((45, 77, 3), 200, dtype=np.uint8)).save(wide)
    small = data / "val" / "class_0" / "0.png"  # 24x20: resized to the run's 40x32 input
    predictions = tmp_path / "predictions.json"
    assert main(["predict", str(small), str(wide), "--run", str(out), "--topk", "2",
                 "--results-file", str(predictions)]) == 0
    assert f"{wide} (77x45): class_" in capsys.readouterr().out
    results = json.loads(predictions.read_text())
    assert [r["size"] for r in results] == [[24, 20], [77, 45]]
    probabilities = [t["probability"] for t in results[0]["top"]]
    assert len(probabilities) == 2 and probabilities[0] >= probabilities[1] and sum(probabilities) <= 1 + 1e-6
    assert main(["predict", str(wide), "--run", str(out), "--native-size"]) == 0  # any-resolution model
    assert main(["predict", str(small), "--run", str(out), "--native-size"]) == 2
    assert "0.png (24x20) cannot be fed at its own size" in capsys.readouterr().err


def test_predict_with_a_named_model_takes_the_checkpoint_whole(trained_run, tmp_path, capsys):
    """`--model NAME --checkpoint FILE` of a 3-class fine-tune predicts with its 3-class head, not a random
    1000-class one; a contradicting --num-classes, a size the model cannot take and no weights at all are said."""
    data, out = trained_run
    image = str(data / "val" / "class_0" / "0.png")
    named = ["--model", "fastervit_0_any_res", "--model-kwargs", json.dumps(TINY_FASTERVIT_KWARGS)]
    weights = ["--checkpoint", str(out / "model.safetensors")]
    result = tmp_path / "p.json"
    assert main(["predict", image, *named, *weights, "--img-size", "32", "--results-file", str(result)]) == 0
    top = json.loads(result.read_text())[0]["top"]
    assert len(top) == 3 and {t["index"] for t in top} == {0, 1, 2}
    with_run = tmp_path / "r.json"
    assert main(["predict", image, "--run", str(out), "--img-size", "32", "--results-file", str(with_run)]) == 0
    assert [t["probability"] for t in json.loads(with_run.read_text())[0]["top"]] == [t["probability"] for t in top]
    capsys.readouterr()
    assert main(["predict", image, *named, *weights, "--num-classes", "5"]) == 2
    assert "--num-classes 5, but the classifier in" in capsys.readouterr().err
    assert main(["predict", image, *named, *weights, "--img-size", "16"]) == 2
    err = capsys.readouterr().err
    assert "0.png (24x20) cannot be fed at 16x16 (H x W)" in err and "--img-size" in err
    assert len(err.splitlines()) == 1
    assert main(["predict", image, *named, "--img-size", "32"]) == 0
    assert "no --checkpoint: fastervit_0_any_res runs on its initial (random) weights" in capsys.readouterr().err
    for option in (["--topk", "0"], ["--num-classes", "0"]):
        with pytest.raises(SystemExit):
            main(["predict", image, *named, *option])
        assert "is not a positive integer" in capsys.readouterr().err


def test_validate_refuses_a_dataset_with_other_classes(trained_run, tmp_path, capsys):
    """Labels are positions in the class list: other class names, even as many, would be scored as wrong."""
    data, out = trained_run
    other = make_image_folder(tmp_path / "other", classes=2, train=1, val=1)
    assert main(["validate", "--run", str(out), "--data", str(other), "--no-progress"]) == 2
    assert "has classes [class_0, class_1] but the model in" in capsys.readouterr().err
    renamed = tmp_path / "renamed" / "val"
    for name, new in (("class_0", "a_class_2"), ("class_1", "b_class_1"), ("class_2", "c_class_0")):
        shutil.copytree(data / "val" / name, renamed / new)
    assert main(["validate", "--run", str(out), "--data", str(renamed.parent), "--no-progress"]) == 2
    assert (f"{renamed} has classes [a_class_2, b_class_1, c_class_0] but the model in {out} has classes "
            "[class_0, class_1, class_2]") in capsys.readouterr().err
    named = ["validate", "--model", "fastervit_0_any_res", "--num-classes", "3", "--model-kwargs",
             json.dumps(TINY_FASTERVIT_KWARGS), "--data", str(other), "--no-progress"]
    assert main(named) == 2  # a model without a run knows only how many classes it predicts
    assert "has 2 classes but the model predicts 3" in capsys.readouterr().err


def test_validate_on_a_folder_with_only_the_val_split(trained_run, tmp_path):
    data, out = trained_run
    shutil.copytree(data / "val", tmp_path / "eval_only" / "val")
    result = tmp_path / "result.json"
    assert main(["validate", "--run", str(out), "--data", str(tmp_path / "eval_only"), "--no-progress",
                 "--results-file", str(result)]) == 0
    assert json.loads(result.read_text())["samples"] == 12


def test_unreadable_image_in_a_data_worker_is_one_line(trained_run, tmp_path, capsys):
    data, out = trained_run
    root = tmp_path / "data"
    shutil.copytree(data / "val", root / "val")
    broken = root / "val" / "class_1" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert main(["validate", "--run", str(out), "--data", str(root), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastvits validate: error: cannot decode image {broken} (") and "Delete or replace" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("mistake", ["output under a file", "results file under a file", "unknown model argument",
                                     "cuda without a GPU"])
def test_user_mistakes_are_one_line_errors(trained_run, tmp_path, capsys, mistake):
    data, out = trained_run
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    train = ["train", "--model", "test_vit", "--data", str(data), "--img-size", "32", "--no-progress",
             "--output", str(tmp_path / "run")]
    args, expected = {
        "output under a file": ([*train[:-1], str(blocker / "run")],
                                f"--output {blocker / 'run'}: cannot write files in {blocker / 'run'} ({blocker} "
                                "is a file); choose a path you can write to"),
        "results file under a file": (["validate", "--run", str(out), "--data", str(data),
                                       "--results-file", str(blocker / "r.json")],
                                      f"--results-file {blocker / 'r.json'}: cannot write files in {blocker}"),
        "unknown model argument": ([*train, "--model-kwargs", '{"embed_dimm": 8}'],
                                   "model test_vit has no constructor argument 'embed_dimm'"),
        "cuda without a GPU": ([*train, "--device", "cuda"], "--device cuda was given but PyTorch sees no CUDA"),
    }[mistake]
    if mistake == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.splitlines()) == 1


def test_epochs_help_counts_the_cooldown(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "follow, so the fastervit preset with --epochs 2 trains 12" in " ".join(capsys.readouterr().out.split())


def test_finetune_from_weights_with_a_new_head(trained_run, tmp_path):
    """The 3-class run's weights start a 2-class run at another input size; the new head is re-initialised."""
    _, out = trained_run
    data = make_image_folder(tmp_path / "data", classes=2, train=4, val=2, size=(40, 36))
    run = tmp_path / "finetune"
    assert main(["train", *TINY_FASTERVIT, "--checkpoint", str(out / "model.safetensors"), "--data", str(data),
                 "--img-size", "36", "--preset", "finetune", "--epochs", "1", "-b", "4", "--workers", "0",
                 "--no-progress", "--output", str(run)]) == 0
    spec = json.loads((run / "run.json").read_text())["model"]
    assert spec["num_classes"] == 2 and spec["data_config"]["input_size"] == [3, 36, 36]


def test_compiled_training(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=2, train=4, val=2)
    assert main(["train", *TINY_FASTERVIT, "--data", str(data), "--img-size", "32", "--preset", "plain", "-b", "4",
                 "--workers", "0", "--compile", "--no-progress", "--output", str(tmp_path / "run")]) == 0
