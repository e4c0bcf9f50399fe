"""Detection end to end: the four torchvision detectors, a short training that lowers the loss, COCO mAP,
drawings, and the `fastvits detect` command on synthetic shapes and on the coins photo."""

import json
import re
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

import fastvits
from fastvits.cli import main
from fastvits.downstream import ARCHS, BackboneConfig, DetectorConfig, build_detector, engine
from fastvits.downstream.datasets import DetectionDataset, detection_collate
from fastvits.downstream.engine import detection_losses, evaluate_detection, train
from fastvits.downstream.formats import CocoImages
from fastvits.downstream.schedule import TrainConfig
from fastvits.downstream.synthetic import make_coins_dataset, make_shapes_dataset

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


def test_fcos_with_a_narrow_fpn_runs_on_small_images(shapes):
    """At 32 FPN channels torchvision's GroupNorm(32, 32) left one value per group on the 1x1 P7 map of a
    96-px image, and refused batch size 1; the head now keeps 4 channels per group (8 groups)."""
    model = _detector("fcos")
    image, target = DetectionDataset(CocoImages(shapes / "annotations.json", shapes / "images"))[0]
    losses = model.train()([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    (output,) = model.eval()([image])
    assert {"boxes", "scores", "labels"} <= set(output)
    assert model.head.classification_head.conv[1].num_groups == 8


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory):
    """A Mask R-CNN run trained for one step, for the eval and predict checks."""
    return _cli_run(shapes, False, tmp_path_factory.mktemp("run"), "maskrcnn", ["--max-steps", "1"])


def _copy_image(shapes, folder, name="00000.png"):
    folder.mkdir(exist_ok=True)
    return shutil.copy(shapes / "images" / name, folder / name)


def test_predict_gives_every_input_its_own_drawing(run, shapes, tmp_path, capsys):
    other = _copy_image(shapes, tmp_path / "other")
    first = shapes / "images" / "00000.png"
    out = tmp_path / "pred"
    argv = ["detect", "predict", "--run", str(run), str(first), str(other), str(first), "--output", str(out)]
    assert main(argv) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in records] == [str(first), str(other)]  # the file given twice is drawn once
    assert [r["drawing"] for r in records] == [str(out / "00000.png"), str(out / "00000_2.png")]
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00000_2.png"]
    assert "wrote 2 drawings" in capsys.readouterr().out


def _train_argv(shapes, out, *extra):
    return [
        "detect", "train", "--images", str(shapes / "images"), "--ann", str(shapes / "annotations.json"),
        "--backbone", TINY.name, "--backbone-kwargs", json.dumps(TINY.kwargs), "--arch", "fasterrcnn",
        "--fpn-channels", "32", "--min-size", "96", "--max-size", "96", "--max-steps", "1", "--output", str(out),
        *extra,
    ]  # fmt: skip


def test_train_refuses_an_existing_run_unless_overwrite(shapes, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_train_argv(shapes, out)) == 0
    (out / "eval.json").write_text("{}")
    (out / "predictions").mkdir()
    (out / "notes.txt").write_text("mine")
    model = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(_train_argv(shapes, out)) == 2
    error = capsys.readouterr().err
    assert "already holds a run (config.json, model.safetensors, log.csv" in error and "--overwrite" in error
    assert (out / "model.safetensors").read_bytes() == model and (out / "eval.json").is_file()

    # A run killed part-way leaves its log and no config.json, so it cannot pass for a finished run, and
    # nothing of the old run is left beside its log.
    steps = []

    def killed_at_step_2(*args):
        steps.append(len(steps))
        if len(steps) == 2:
            raise KeyboardInterrupt
        return detection_losses(*args)

    monkeypatch.setattr(engine, "detection_losses", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        main(_train_argv(shapes, out, "--overwrite", "--max-steps", "2"))
    assert sorted(p.name for p in out.iterdir()) == ["log.csv", "notes.txt"]  # the user's own file stays
    monkeypatch.undo()
    eval_argv = ["detect", "eval", "--run", str(out), "--images", str(shapes / "images")]
    assert main([*eval_argv, "--ann", str(shapes / "annotations.json")]) == 2
    assert "has no config.json, which `train` writes when it finishes" in capsys.readouterr().err
    assert main(_train_argv(shapes, out)) == 2  # the unfinished run's log is a run's file too
    assert main(_train_argv(shapes, out, "--overwrite")) == 0
    assert (out / "log.csv").read_text().count("\n") == 2  # header + the one step of the new run


def _box_only(shapes, tmp_path, images=None):
    """The shapes annotations as a hand-written box-only file: no masks, no iscrowd, no area."""
    coco = json.loads((shapes / "annotations.json").read_text())
    drop = ("segmentation", "iscrowd", "area")
    coco["annotations"] = [{k: v for k, v in a.items() if k not in drop} for a in coco["annotations"]]
    if images is not None:
        coco |= dict(images=images, annotations=[])
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    return path


def test_box_only_annotations_train_and_evaluate(shapes, run, tmp_path, capsys):
    boxes = _box_only(shapes, tmp_path)
    argv = _train_argv(shapes, tmp_path / "mask", "--ann", str(boxes), "--arch", "maskrcnn")
    assert main(argv) == 2
    assert "have no segmentation mask (first ids: [1, 2, 3]); Mask R-CNN learns from masks; use --arch fasterrcnn" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "mask").exists()  # refused before anything was written
    val = ["--val-images", str(shapes / "images"), "--val-ann", str(boxes)]
    assert main(_train_argv(shapes, tmp_path / "box", "--ann", str(boxes), *val)) == 0
    assert 0 <= json.loads((tmp_path / "box" / "results.json").read_text())["bbox_mAP"] <= 1
    # A Mask R-CNN run is scored on boxes alone where the ground truth has no masks.
    assert main(["detect", "eval", "--run", str(run), "--images", str(shapes / "images"), "--ann", str(boxes)]) == 0
    metrics = json.loads((run / "eval.json").read_text())
    assert "bbox_mAP" in metrics and "segm_mAP" not in metrics


def test_annotations_without_images_are_refused(shapes, run, tmp_path, capsys):
    empty = _box_only(shapes, tmp_path, images=[])
    argv = ["detect", "eval", "--run", str(run), "--images", str(shapes / "images"), "--ann", str(empty)]
    assert main([*argv, "--output", str(tmp_path / "eval.json")]) == 2
    assert "lists no images, so there is nothing to train on or evaluate" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()
    assert main(_train_argv(shapes, tmp_path / "new", "--ann", str(empty))) == 2
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def bad(shapes, tmp_path_factory):
    """A folder of broken inputs, one per mistake."""
    root = tmp_path_factory.mktemp("bad")
    coco = json.loads((shapes / "annotations.json").read_text())
    (root / "broken.json").write_text(json.dumps(coco, indent=1)[:200])
    (root / "no_bbox.json").write_text(json.dumps(coco | dict(annotations=[{"id": 1, "image_id": 1}])))
    (root / "no_categories.json").write_text(json.dumps({k: v for k, v in coco.items() if k != "categories"}))
    (root / "no_images.json").write_text(json.dumps({k: v for k, v in coco.items() if k != "images"}))
    sized = coco | dict(images=[i | dict(height=100, width=80) for i in coco["images"]])
    (root / "wrong_size.json").write_text(json.dumps(sized))
    (root / "not_an_image.png").write_text("text")
    small, rgb, unknown, missing = (root / name for name in ("small", "rgb", "unknown", "missing"))
    for folder, mask in [
        (small, np.zeros((50, 96), np.uint8)),
        (rgb, np.zeros((96, 96, 3), np.uint8)),
        (unknown, np.full((96, 96), 7, np.uint8)),
    ]:
        folder.mkdir()
        for image in (shapes / "images").iterdir():
            Image.fromarray(mask).save(folder / image.name)
        shutil.copy(shapes / "classes.txt", folder.parent / f"{folder.name}.txt")
    shutil.copytree(shapes / "masks", missing)
    (missing / "00003.png").unlink()
    (root / "other_classes.txt").write_text("a\nb\nc\n")
    fastvits.save_safetensors(timm.create_model("resnet18").state_dict(), root / "resnet18.safetensors")
    return root


# name -> (command line with {run}, {images}, {ann}, {masks}, {bad} to fill in; what the error line must say)
MISTAKES = {
    "missing run": ("eval --run {bad}/nope --images {images} --ann {ann}", "run folder .*nope not found"),
    "missing classes file": (
        "eval --run {run} --images {images} --masks {masks} --classes {bad}/none.txt",
        "classes file .*none.txt not found",
    ),
    "mask size": (
        "eval --run {run} --images {images} --masks {bad}/small --classes {bad}/small.txt",
        "mask .*00000.png is 96x50 but image .*00000.png is 96x96",
    ),
    "rgb mask": ("eval --run {run} --images {images} --masks {bad}/rgb --classes {bad}/rgb.txt", "has mode RGB"),
    "unknown mask ids": (
        "eval --run {run} --images {images} --masks {bad}/unknown --classes {bad}/unknown.txt",
        r"holds class ids \[7\]",
    ),
    "image without mask": (
        "eval --run {run} --images {images} --masks {bad}/missing --classes {masks}/../classes.txt",
        r"1 images in .* have no mask NAME.png .*\['00003.png'\]",
    ),
    "both ann and masks": ("eval --run {run} --images {images} --ann {ann} --masks {masks}", "exactly one of"),
    "other classes": (
        "eval --run {run} --images {images} --masks {masks} --classes {bad}/other_classes.txt",
        r"the data's classes \['a', 'b', 'c'\] differ from the model's",
    ),
    "broken json": (
        "eval --run {run} --images {images} --ann {bad}/broken.json",
        r"broken.json is not valid JSON: .* at line \d+, column \d+",
    ),
    "no bbox": (
        "eval --run {run} --images {images} --ann {bad}/no_bbox.json",
        r"no_bbox.json: annotations\[0\] has no 'category_id', 'bbox'",
    ),
    "no categories": ("eval --run {run} --images {images} --ann {bad}/no_categories.json", "has no 'categories' list"),
    "no images": ("eval --run {run} --images {images} --ann {bad}/no_images.json", "has no 'images' list"),
    "wrong size": (
        "eval --run {run} --images {images} --ann {bad}/wrong_size.json",
        "gives image 00000.png width 80 and height 100, but .*00000.png is 96x96",
    ),
    "missing input": ("predict --run {run} {bad}/nope.png", "input .*nope.png not found"),
    "undecodable input": ("predict --run {run} {bad}/not_an_image.png", "cannot read image .*not_an_image.png"),
    "unknown backbone": (
        "train --images {images} --ann {ann} --backbone fastervit_0_anyres",
        r"unknown backbone 'fastervit_0_anyres' \(did you mean fastervit_0_any_res",
    ),
    "unknown backbone argument": (
        "train --images {images} --ann {ann} --backbone resnet10t --backbone-kwargs {{\"dimm\":3}}",
        "backbone resnet10t has no constructor argument 'dimm'; remove it from --backbone-kwargs",
    ),
    "unknown detector setting": (
        "train --images {images} --ann {ann} --backbone resnet10t --arch retinanet --detector-kwargs {{\"foo\":1}}",
        "--detector-kwargs: RetinaNet has no setting foo; it takes .*score_thresh",
    ),
    "detector setting of ours": (
        "train --images {images} --ann {ann} --backbone resnet10t --detector-kwargs {{\"min_size\":100}}",
        "min_size are set from the other options",
    ),
    "cuda without a GPU": ("train --images {images} --ann {ann} --backbone resnet10t --device cuda", "no CUDA device"),
    "wrong-variant checkpoint": (
        "train --images {images} --ann {ann} --backbone resnet10t --checkpoint {bad}/resnet18.safetensors",
        "does not fit|another variant",
    ),
}


@pytest.mark.parametrize("option", ["--fpn-channels 0", "--batch-size 0", "--epochs 0", "--workers -1"])
def test_counts_are_checked_by_the_parser(option, capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect", "train", "--images", "x", "--backbone", "resnet10t", *option.split()])
    assert e.value.code == 2 and "is not a" in capsys.readouterr().err


@pytest.mark.parametrize("mistake", MISTAKES)
def test_user_mistakes_end_in_one_line_errors(mistake, run, shapes, bad, tmp_path, capsys):
    if mistake == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    command, message = MISTAKES[mistake]
    paths = dict(run=run, images=shapes / "images", ann=shapes / "annotations.json", masks=shapes / "masks", bad=bad)
    argv = ["detect", *command.format(**paths).split(), "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and not (tmp_path / "out").exists()
    line = error[error.index("fastvits detect: error: ") :]
    assert re.search(message, line), line
    if mistake != "wrong-variant checkpoint":  # fastvits.CheckpointError lists the mismatching keys below
        assert line.count("\n") == 1
