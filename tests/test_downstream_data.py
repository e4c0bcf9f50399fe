"""Datasets: synthetic shapes and coins ground truth, both file formats, augmentation, and error messages."""

import contextlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastvits.downstream.annotations import encode_mask, mask_to_box, read_classes
from fastvits.downstream.datasets import DetectionDataset, SegmentationDataset
from fastvits.downstream.engine import coco_metrics
from fastvits.downstream.formats import CocoImages, MaskFolderImages, load_rgb, open_annotated_images
from fastvits.downstream.synthetic import SHAPE_CLASSES, coins_instances, make_shapes_dataset, render_shapes
from fastvits.errors import UserError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=6, size=96, seed=1)


@contextlib.contextmanager
def user_error(kind: type[Exception], match: str):
    """`pytest.raises` for an error that is the built-in `kind` for Python callers and a `UserError`, which the
    command line prints as one line."""
    with pytest.raises(kind, match=match) as info:
        yield info
    assert isinstance(info.value, UserError), type(info.value)


def _write(path, coco):
    path.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return path


def test_render_shapes_ground_truth_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, labels, masks = render_shapes(rng, 96, 4)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert len(labels) == len(masks) >= 1 and set(labels.tolist()) <= {1, 2, 3}
        assert masks.sum(0).max() == 1, "shapes never overlap, so instance masks are exact"
        for label, mask in zip(labels, masks):
            x1, y1, x2, y2 = map(int, mask_to_box(mask))
            if SHAPE_CLASSES[label - 1] == "rectangle":
                assert mask[y1:y2, x1:x2].all() and mask.sum() == (x2 - x1) * (y2 - y1)
            else:  # ellipses and triangles fill part of their box and touch all four sides
                assert 0.3 < mask[y1:y2, x1:x2].mean() < 0.9
                assert mask[y1].any() and mask[y2 - 1].any() and mask[:, x1].any() and mask[:, x2 - 1].any()


def test_both_formats_describe_the_same_instances(shapes):
    coco = CocoImages(shapes / "annotations.json", shapes / "images")
    folder = open_annotated_images(shapes / "images", masks=shapes / "masks")
    assert coco.classes == folder.classes == list(SHAPE_CLASSES) and len(coco) == len(folder) == 6
    for i in range(len(coco)):
        a, b = coco.load_annotations(i), folder.load_annotations(i)
        order_a = np.lexsort(a.boxes.T[::-1])
        order_b = np.lexsort(b.boxes.T[::-1])
        np.testing.assert_array_equal(a.boxes[order_a], b.boxes[order_b])
        np.testing.assert_array_equal(a.labels[order_a], b.labels[order_b])
        np.testing.assert_array_equal(a.masks[order_a], b.masks[order_b])
        np.testing.assert_array_equal(coco.load_semantic(i), folder.load_semantic(i))
    assert len(folder.coco_gt().anns) == len(coco.coco_gt().anns)


def test_coins_are_found_by_thresholding():
    image, masks = coins_instances()
    assert image.shape == (303, 384, 3)
    assert len(masks) == 24, "the photo shows 24 coins"
    assert masks.sum(0).max() == 1
    areas = masks.sum((1, 2))
    assert areas.min() > 800 and areas.max() < 4000  # coin-sized, none merged with a neighbour


def test_detection_flip_keeps_boxes_on_masks(shapes):
    dataset = DetectionDataset(CocoImages(shapes / "annotations.json", shapes / "images"), train=True)
    torch.manual_seed(0)
    for _ in range(6):
        image, target = dataset[0]
        assert image.shape == (3, 96, 96) and 0 <= image.min() and image.max() <= 1
        for box, mask in zip(target["boxes"], target["masks"]):
            assert mask_to_box(mask.numpy()) == box.tolist()


def test_segmentation_samples(shapes):
    source = MaskFolderImages(shapes / "images", shapes / "masks", SHAPE_CLASSES)
    image, mask = SegmentationDataset(source, size=64, crop=80, train=True)[0]
    assert image.shape == (3, 80, 80) and mask.shape == (80, 80) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 255}
    image, mask = SegmentationDataset(source, size=64)[0]
    assert image.shape == (3, 64, 64) and mask.shape == (96, 96)  # eval keeps the mask at full resolution


def test_error_messages_name_problem_and_fix(shapes, tmp_path):
    with user_error(FileNotFoundError, "annotation file .* not found"):
        CocoImages(tmp_path / "missing.json", shapes / "images")
    coco = json.loads((shapes / "annotations.json").read_text())

    bad = dict(coco, annotations=[dict(coco["annotations"][0], category_id=9)])
    (tmp_path / "bad_cat.json").write_text(json.dumps(bad))
    with user_error(ValueError, r"category ids \[9\]"):
        CocoImages(tmp_path / "bad_cat.json", shapes / "images")

    missing = dict(coco, images=coco["images"] + [dict(id=99, file_name="nope.png", height=96, width=96)])
    (tmp_path / "missing_img.json").write_text(json.dumps(missing))
    with user_error(FileNotFoundError, "1 of 7 images .* missing"):
        CocoImages(tmp_path / "missing_img.json", shapes / "images")

    masks = tmp_path / "masks"
    masks.mkdir()
    for i, path in enumerate(sorted((shapes / "images").iterdir())):
        mask = np.asarray(Image.open(shapes / "masks" / path.name))
        if i == 0:
            mask = mask[:50]  # wrong size
        if i == 1:
            mask = np.where(mask > 0, 7, 0).astype(np.uint8)  # class id 7 with 3 classes
        if i < 5:  # the last image has no mask
            Image.fromarray(mask).save(masks / path.name)
    with user_error(FileNotFoundError, "have no mask"):
        MaskFolderImages(shapes / "images", masks, SHAPE_CLASSES)
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(masks / "00005.png")
    source = MaskFolderImages(shapes / "images", masks, SHAPE_CLASSES)
    with user_error(ValueError, "is 96x50 but image .* is 96x96; resize"):
        source.load_semantic(0)
    with user_error(ValueError, r"class ids \[7\]"):
        source.load_annotations(1)
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(masks / "00002.png")
    with user_error(ValueError, "single-channel"):
        source.load_semantic(2)
    with user_error(FileNotFoundError, "classes file"):
        open_annotated_images(shapes / "images", masks=masks, classes=tmp_path / "none.txt")
    with user_error(ValueError, "exactly one"):
        open_annotated_images(shapes / "images")
    with user_error(ValueError, "exactly one"):
        open_annotated_images(shapes / "images", ann=shapes / "annotations.json", masks=shapes / "masks")
    with user_error(ValueError, "is empty"):
        read_classes(_write(tmp_path / "empty.txt", "\n"))
    with user_error(ValueError, r"cannot read image .*not_an_image.png"):
        load_rgb(_write(tmp_path / "not_an_image.png", "text"))


def _drop(entries, *keys):
    return [{k: v for k, v in e.items() if k not in keys} for e in entries]


# name -> (edit of the COCO dict, or the file's text; what the message must say)
COCO_MISTAKES = {
    "broken JSON": (lambda c: json.dumps(c, indent=1)[:300], r"is not valid JSON: .* at line \d+, column \d+"),
    "not an object": (lambda c: "[1, 2]", "holds a JSON list; a COCO annotation file is an object"),
    "no images": (lambda c: {k: v for k, v in c.items() if k != "images"}, "has no 'images' list"),
    "no categories": (lambda c: {k: v for k, v in c.items() if k != "categories"}, "has no 'categories' list"),
    "no bbox": (lambda c: c | dict(annotations=_drop(c["annotations"], "bbox")), r"annotations\[0\] has no 'bbox'"),
    "no width": (lambda c: c | dict(images=_drop(c["images"], "width")), r"images\[0\] has no 'width'"),
    "empty images": (lambda c: c | dict(images=[], annotations=[]), "lists no images, so there is nothing to"),
    "repeated ids": (lambda c: c | dict(images=[c["images"][0]] * 2), r"'images' repeats ids \[1\]"),
    "unknown image": (
        lambda c: c | dict(annotations=[c["annotations"][0] | dict(image_id=99)]),
        r"image ids \[99\] that 'images' does not list",
    ),
}


@pytest.mark.parametrize("mistake", COCO_MISTAKES)
def test_coco_file_mistakes_name_the_file_and_the_fix(mistake, shapes, tmp_path):
    edit, message = COCO_MISTAKES[mistake]
    path = _write(tmp_path / "ann.json", edit(json.loads((shapes / "annotations.json").read_text())))
    with user_error(ValueError, message) as info:
        CocoImages(path, shapes / "images")
    assert str(path) in str(info.value)


def test_coco_sizes_are_checked_against_the_images(shapes, tmp_path):
    coco = json.loads((shapes / "annotations.json").read_text())
    wrong_size = coco | dict(images=[coco["images"][0] | dict(height=100, width=80)] + coco["images"][1:])
    source = CocoImages(_write(tmp_path / "size.json", wrong_size), shapes / "images")
    with user_error(ValueError, r"00000.png width 80 and height 100, but .*00000.png is 96x96; correct"):
        source.load_annotations(0)
    small_mask = coco["annotations"][0] | dict(segmentation=encode_mask(np.ones((50, 40), bool)))
    source = CocoImages(_write(tmp_path / "rle.json", coco | dict(annotations=[small_mask])), shapes / "images")
    with user_error(ValueError, r"mask of annotation 1 is 40x50 but its image is 96x96"):
        source.load_annotations(0)


def test_box_only_coco_without_iscrowd_and_area_is_evaluated(shapes, tmp_path):
    """Hand-written box-only files: iscrowd defaults to 0 and area to the box's (the mask's where there is one),
    which pycocotools' evaluation needs; perfect detections then score mAP 1."""
    coco = json.loads((shapes / "annotations.json").read_text())
    box_only = coco | dict(annotations=_drop(coco["annotations"], "iscrowd", "area", "segmentation"))
    source = CocoImages(_write(tmp_path / "boxes.json", box_only), shapes / "images")
    assert source.missing_masks().startswith(f"{len(coco['annotations'])} of {len(coco['annotations'])} annotations")
    for ann in source.coco_gt().anns.values():
        assert ann["iscrowd"] == 0 and ann["area"] == ann["bbox"][2] * ann["bbox"][3]
    results = [
        dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0)
        for a in box_only["annotations"]
    ]
    assert coco_metrics(source, results, "bbox", source.ids)["bbox_mAP"] == pytest.approx(1.0)
    no_area = coco | dict(annotations=_drop(coco["annotations"], "area"))
    masked = CocoImages(_write(tmp_path / "no_area.json", no_area), shapes / "images")
    assert masked.missing_masks() is None
    assert [a["area"] for a in masked.coco_gt().anns.values()] == [a["area"] for a in coco["annotations"]]
