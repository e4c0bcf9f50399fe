"""Segmentation end to end: Semantic FPN and UPerNet heads, a short training that lowers the loss, mIoU,
drawings, and the `fastvits segment` command on synthetic shapes and on the coins photo."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastvits.cli import main
from fastvits.downstream import HEADS, BackboneConfig, SegmenterConfig, build_segmenter
from fastvits.downstream.datasets import SegmentationDataset
from fastvits.downstream.engine import evaluate_segmentation, segmentation_losses, train
from fastvits.downstream.formats import MaskFolderImages
from fastvits.downstream.schedule import TrainConfig
from fastvits.downstream.synthetic import make_coins_dataset, make_shapes_dataset

TINY_KWARGS = dict(dim=16, in_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=(7, 7, 7, 7))
TINY = BackboneConfig("fastervit_0_any_res", kwargs=TINY_KWARGS)
TINY_LITV2 = BackboneConfig("litv2_s", kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=8, size=96, seed=0)


@pytest.mark.parametrize("head", HEADS)
def test_heads_give_full_size_logits_on_odd_sizes(head):
    model = build_segmenter(SegmenterConfig(head, 5, 32), TINY)
    logits = model(torch.rand(2, 3, 75, 133))
    assert logits.shape == (2, 5, 75, 133)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_a_few_steps_lower_the_loss_and_eval_returns_miou(shapes, tmp_path):
    source = MaskFolderImages(shapes / "images", shapes / "masks", ["rectangle", "ellipse", "triangle"])
    loader = DataLoader(SegmentationDataset(source, size=96), batch_size=4)  # unaugmented: a clean loss signal
    model = build_segmenter(SegmenterConfig("semfpn", 4, 32), TINY)
    torch.manual_seed(0)
    history = train(model, loader, segmentation_losses, TrainConfig(epochs=4, lr=2e-3), tmp_path, torch.device("cpu"))
    assert sum(history[-2:]) / 2 < 0.7 * history[0], history
    metrics = evaluate_segmentation(model, source, 96, torch.device("cpu"), max_images=4)
    assert 0 <= metrics["mIoU"] <= 1 and 0 <= metrics["aAcc"] <= 1
    assert {"IoU_background", "IoU_rectangle", "IoU_ellipse", "IoU_triangle"} <= set(metrics)


def _train(data, tmp_path, head, val, backbone=TINY):
    run = tmp_path / f"run-{head}"
    argv = [
        "segment",
        "train",
        "--images",
        str(data / "images"),
        "--masks",
        str(data / "masks"),
        "--val-images",
        str(data / "images"),
        *val,
        "--backbone",
        backbone.name,
        "--backbone-kwargs",
        json.dumps(backbone.kwargs),
        "--head",
        head,
        "--channels",
        "32",
        "--size",
        "96",
        "--crop",
        "96",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--output",
        str(run),
    ]
    assert main(argv) == 0
    return run


def test_cli_train_eval_predict_on_shapes(shapes, tmp_path):
    run = _train(shapes, tmp_path, "semfpn", ["--val-ann", str(shapes / "annotations.json")])
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 and 0 <= results["mIoU"] <= 1
    assert (
        main(
            [
                "segment",
                "eval",
                "--run",
                str(run),
                "--images",
                str(shapes / "images"),
                "--masks",
                str(shapes / "masks"),
                "--output",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert "mIoU" in json.loads((tmp_path / "m.json").read_text())
    assert main(["segment", "predict", "--run", str(run), str(shapes / "images" / "00003.png")]) == 0
    assert (run / "predictions" / "00003.png").stat().st_size > 0
    mask = np.asarray(Image.open(run / "predictions" / "00003_mask.png"))
    assert mask.shape == (96, 96) and mask.max() <= 3


def test_predict_gives_every_input_its_own_files(shapes, tmp_path):
    """Equal stems from two folders, and an input named like another's mask file, each get their own files."""
    run = _train(shapes, tmp_path, "semfpn", ["--val-masks", str(shapes / "masks")])
    (tmp_path / "other").mkdir()
    inputs = [
        shapes / "images" / "00003.png",
        shutil.copy(shapes / "images" / "00003.png", tmp_path / "other" / "00003.png"),
        shutil.copy(shapes / "images" / "00004.png", tmp_path / "other" / "00003_mask.png"),
    ]
    out = tmp_path / "pred"
    assert main(["segment", "predict", "--run", str(run), *map(str, inputs), "--output", str(out)]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert [(r["drawing"], r["mask"]) for r in records] == [
        (str(out / "00003.png"), str(out / "00003_mask.png")),
        (str(out / "00003_2.png"), str(out / "00003_2_mask.png")),
        (str(out / "00003_mask_2.png"), str(out / "00003_mask_2_mask.png")),
    ]
    assert len(list(out.glob("*.png"))) == 6


def test_masks_are_required(shapes, tmp_path, capsys):
    coco = json.loads((shapes / "annotations.json").read_text())
    coco["annotations"] = [{k: v for k, v in a.items() if k != "segmentation"} for a in coco["annotations"]]
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    argv = ["segment", "train", "--images", str(shapes / "images"), "--ann", str(tmp_path / "boxes.json")]
    assert main([*argv, "--backbone", TINY.name, "--output", str(tmp_path / "run")]) == 2
    assert "have no segmentation mask" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_cli_on_coins_photo(tmp_path, capsys):
    coins = make_coins_dataset(tmp_path / "coins")
    run = _train(coins, tmp_path, "upernet", ["--val-masks", str(coins / "masks")], TINY_LITV2)
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["mIoU"] <= 1 and set(results) >= {"IoU_background", "IoU_coin"}
    assert main(["segment", "predict", "--run", str(run), str(coins / "images" / "coins.png")]) == 0
    assert (run / "predictions" / "coins.png").is_file()
    argv = ["segment", "eval", "--run", str(run), "--images", str(coins / "images"), "--masks", str(coins / "masks")]
    assert main([*argv, "--classes", str(_write_classes(tmp_path, ["coin", "note"]))]) == 2
    assert "classes ['coin', 'note'] differ from the model's ['coin']" in capsys.readouterr().err


def _write_classes(tmp_path, names):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(names))
    return path
