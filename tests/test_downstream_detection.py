"""Detection end to end: the four torchvision detectors, a short training that lowers the loss, COCO mAP,
drawings, and the `fastvits detect` command on synthetic shapes and on the coins photo."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from fastvits.cli import main
from fastvits.downstream import ARCHS, BackboneConfig, DetectorConfig, build_detector
from fastvits.downstream.data import (
    CocoImages,
    DetectionDataset,
    detection_collate,
    make_coins_dataset,
    make_shapes_dataset,
)
from fastvits.downstream.engine import detection_losses, evaluate_detection, train
from fastvits.downstream.schedule import TrainConfig

TINY_KWARGS = dict(dim=16, in_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=(7, 7, 7, 7))
TINY = BackboneConfig("fastervit_0_any_res", kwargs=TINY_KWARGS)
TINY_LITV2 = BackboneConfig("litv2_s", kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)))
# Small sampling sizes and few kept detections keep the R-CNN heads and mask pasting cheap on a CPU.
FAST_RCNN = dict(
    rpn_batch_size_per_image=64,
    box_batch_size_per_image=64,
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
    box_detections_per_img=20,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=8, size=96, seed=0)


def _detector(arch: str, **kw) -> torch.nn.Module:
    extra = FAST_RCNN if arch in ("maskrcnn", "fasterrcnn") else {}
    return build_detector(DetectorConfig(arch, 4, 32, 96, 160, extra), BackboneConfig(**vars(TINY) | kw))


@pytest.mark.parametrize("arch", ARCHS)
def test_detectors_train_and_predict_on_non_square_images(arch, shapes):
    dataset = DetectionDataset(CocoImages(shapes / "annotations.json", shapes / "images"), train=True)
    images, targets = detection_collate([dataset[0], dataset[1]])
    images[1] = images[1][:, :80]  # a 96x80 image next to a 96x96 one; the detector resizes to 96 x <=160
    targets[1]["boxes"][:, 1::2] = targets[1]["boxes"][:, 1::2].clamp(max=80)
    targets[1]["masks"] = targets[1]["masks"][:, :80]
    model = _detector(arch, frozen_stages=1, frozen_bn=True).train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.backbone.body.model.patch_embed.conv_down[0].weight.grad is None  # stem frozen
    outputs = model.eval()(images)
    assert len(outputs) == 2 and {"boxes", "scores", "labels"} <= set(outputs[0])
    assert ("masks" in outputs[0]) == (arch == "maskrcnn")


def test_a_few_steps_lower_the_loss_and_eval_returns_map(shapes, tmp_path):
    source = CocoImages(shapes / "annotations.json", shapes / "images")
    loader = DataLoader(DetectionDataset(source), batch_size=2, collate_fn=detection_collate)
    model = _detector("maskrcnn")
    torch.manual_seed(0)
    history = train(model, loader, detection_losses, TrainConfig(epochs=2, lr=1e-3), tmp_path, torch.device("cpu"))
    assert sum(history[-2:]) / 2 < 0.7 * history[0], history
    assert (tmp_path / "log.csv").read_text().count("\n") == 9 and (tmp_path / "summary.csv").is_file()
    metrics = evaluate_detection(model, source, torch.device("cpu"), max_images=2)
    for key in ("bbox_mAP", "bbox_mAP_50", "segm_mAP"):
        assert 0 <= metrics[key] <= 1


def _cli_run(data, masks_for_val, tmp_path, arch, extra=(), backbone=TINY):
    run = tmp_path / f"run-{arch}"
    val = ["--val-images", str(data / "images")] + (
        ["--val-masks", str(data / "masks")] if masks_for_val else ["--val-ann", str(data / "annotations.json")]
    )
    argv = [
        "detect",
        "train",
        "--images",
        str(data / "images"),
        "--ann",
        str(data / "annotations.json"),
        *val,
        "--backbone",
        backbone.name,
        "--backbone-kwargs",
        json.dumps(backbone.kwargs),
        "--arch",
        arch,
        "--fpn-channels",
        "32",
        "--detector-kwargs",
        json.dumps(FAST_RCNN if arch == "maskrcnn" else {}),
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--output",
        str(run),
        *extra,
    ]
    assert main(argv) == 0
    return run


def test_cli_train_eval_predict_on_shapes(shapes, tmp_path):
    run = _cli_run(shapes, True, tmp_path, "maskrcnn", ["--min-size", "96", "--max-size", "96"])
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 3 and 0 <= results["bbox_mAP"] <= 1 and 0 <= results["segm_mAP"] <= 1
    assert (
        main(
            [
                "detect",
                "eval",
                "--run",
                str(run),
                "--images",
                str(shapes / "images"),
                "--ann",
                str(shapes / "annotations.json"),
                "--max-images",
                "2",
            ]
        )
        == 0
    )
    assert "segm_mAP" in json.loads((run / "eval.json").read_text())
    out = tmp_path / "pred"
    assert (
        main(
            [
                "detect",
                "predict",
                "--run",
                str(run),
                str(shapes / "images" / "00000.png"),
                "--output",
                str(out),
                "--score-thresh",
                "0",
            ]
        )
        == 0
    )
    assert (out / "00000.png").stat().st_size > 0
    assert json.loads((out / "predictions.json").read_text())[0]["image"].endswith("00000.png")


def test_cli_on_coins_photo(tmp_path):
    coins = make_coins_dataset(tmp_path / "coins")
    run = _cli_run(coins, False, tmp_path, "fcos", ["--min-size", "128", "--max-size", "160"], TINY_LITV2)
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["bbox_mAP"] <= 1 and "segm_mAP" not in results
    assert main(["detect", "predict", "--run", str(run), str(coins / "images"), "--output", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["coins.png", "coins_flipped.png"]
