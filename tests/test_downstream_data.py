"""Datasets: synthetic shapes and coins ground truth, both file formats, augmentation, and error messages."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastvits.downstream.data import (
    SHAPE_CLASSES,
    CocoImages,
    DetectionDataset,
    MaskFolderImages,
    SegmentationDataset,
    coins_instances,
    make_shapes_dataset,
    mask_to_box,
    open_annotated_images,
    render_shapes,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=6, size=96, seed=1)


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
    with pytest.raises(FileNotFoundError, match="annotation file .* not found"):
        CocoImages(tmp_path / "missing.json", shapes / "images")
    coco = json.loads((shapes / "annotations.json").read_text())

    bad = dict(coco, annotations=[dict(coco["annotations"][0], category_id=9)])
    (tmp_path / "bad_cat.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"category ids \[9\]"):
        CocoImages(tmp_path / "bad_cat.json", shapes / "images")

    missing = dict(coco, images=coco["images"] + [dict(id=99, file_name="nope.png", height=96, width=96)])
    (tmp_path / "missing_img.json").write_text(json.dumps(missing))
    with pytest.raises(FileNotFoundError, match="1 of 7 images .* missing"):
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
    with pytest.raises(FileNotFoundError, match="have no mask"):
        MaskFolderImages(shapes / "images", masks, SHAPE_CLASSES)
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(masks / "00005.png")
    source = MaskFolderImages(shapes / "images", masks, SHAPE_CLASSES)
    with pytest.raises(ValueError, match="is 96x50 but image .* is 96x96; resize"):
        source.load_semantic(0)
    with pytest.raises(ValueError, match=r"class ids \[7\]"):
        source.load_annotations(1)
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(masks / "00002.png")
    with pytest.raises(ValueError, match="single-channel"):
        source.load_semantic(2)
    with pytest.raises(FileNotFoundError, match="classes file"):
        open_annotated_images(shapes / "images", masks=masks, classes=tmp_path / "none.txt")
    with pytest.raises(ValueError, match="exactly one"):
        open_annotated_images(shapes / "images")
