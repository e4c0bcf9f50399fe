"""Evaluation numbers worked out by hand: COCO result records, box and mask mAP, mIoU and pixel accuracy.

Every expected value below is computed in a comment from the inputs, not taken from an earlier run.

pycocotools' conventions used throughout: AP is averaged over the IoU thresholds 0.50, 0.55, ..., 0.95 (mAP_50 and
mAP_75 are two of them) and a detection matches a ground-truth object when IoU >= threshold; precision is
interpolated (the best precision at any recall >= r) and read at the 101 recalls 0, 0.01, ..., 1 (precision's
denominator has 2e-16 added, so a perfect score reads 1 - 2e-16: compared with abs=1e-9); classes without
ground truth are left out of the mean, and an area bucket without ground truth reads -1. Box IoU is computed on
x, y, w, h boxes without the +1 of the old Pascal convention.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from fastvits.downstream.engine import coco_metrics, detections_to_coco, evaluate_segmentation
from fastvits.downstream.formats import CocoImages, MaskFolderImages
from fastvits.downstream.segmentation import IGNORE_INDEX
from fastvits.downstream.synthetic import write_dataset

SIZE = (100, 100)  # (H, W) of every detection image


# --------------------------------------------------------------------------------------- detections_to_coco
@pytest.fixture
def cats_and_dogs(tmp_path):
    """A COCO file whose category ids are neither 1..K nor in label order: labels are given in id order, so
    label 1 is category 3 ("dog") and label 2 is category 7 ("cat")."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    dataset = dict(
        images=[dict(id=42, file_name="a.png", height=3, width=4)],
        annotations=[],
        categories=[dict(id=7, name="cat"), dict(id=3, name="dog")],
    )
    (tmp_path / "ann.json").write_text(json.dumps(dataset))
    return CocoImages(tmp_path / "ann.json", tmp_path / "images")


def _rle(counts: list[int], size: tuple[int, int]) -> dict:
    """Hand-written run lengths (column-major, zeros first) in COCO's compressed, JSON-ready form."""
    rle = mask_utils.frPyObjects(dict(counts=counts, size=list(size)), *size)
    return dict(size=list(size), counts=rle["counts"].decode("ascii"))


def test_detections_become_coco_records(cats_and_dogs):
    assert cats_and_dogs.classes == ["dog", "cat"]

    def output(masks: bool = True) -> dict[str, torch.Tensor]:
        out = dict(
            boxes=torch.tensor([[0.5, 1.0, 3.0, 2.5], [2.0, 0.0, 4.0, 3.0]]),  # x1, y1, x2, y2
            labels=torch.tensor([2, 1]),
            scores=torch.tensor([0.75, 0.25]),
        )
        if masks:  # (N, 1, H, W) probabilities; a pixel is in the mask when > 0.5, so 0.5 is out
            out["masks"] = torch.tensor(
                [
                    [[[0.9, 0.5, 0.0, 0.0], [0.51, 1.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.6]]],
                    [[[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.99, 0.99, 0.99, 0.99]]],
                ]
            )
        return out

    boxes, masks = detections_to_coco(output(), 42, cats_and_dogs.category_id)
    # x, y, w, h = x1, y1, x2 - x1, y2 - y1; label 2 -> category 7, label 1 -> category 3 (see the fixture)
    assert boxes == [
        dict(image_id=42, category_id=7, score=0.75, bbox=[0.5, 1.0, 2.5, 1.5]),
        dict(image_id=42, category_id=3, score=0.25, bbox=[2.0, 0.0, 2.0, 3.0]),
    ]
    # Mask 1 is [[1 0 0 0], [1 1 0 0], [0 0 0 1]]: column by column 1 1 0 | 0 1 0 | 0 0 0 | 0 0 1, which is
    # 0 zeros, 2 ones, 2 zeros, 1 one, 6 zeros, 1 one. Mask 2 is the bottom row: (2 zeros, 1 one) per column.
    assert masks == [
        dict(image_id=42, category_id=7, score=0.75, segmentation=_rle([0, 2, 2, 1, 6, 1], (3, 4))),
        dict(image_id=42, category_id=3, score=0.25, segmentation=_rle([2, 1, 2, 1, 2, 1, 2, 1], (3, 4))),
    ]
    assert mask_utils.area([m["segmentation"] for m in masks]).tolist() == [4, 4]
    assert json.loads(json.dumps(boxes + masks)) == boxes + masks  # JSON-ready, as results files need
    assert detections_to_coco(output(masks=False), 42, cats_and_dogs.category_id) == (boxes, [])


def test_detections_to_coco_leaves_the_model_output_alone(cats_and_dogs):
    """`.cpu().numpy()` of a CPU tensor shares its memory: an in-place conversion would rewrite the model's output
    (a second call on the same output would get w, h as x2, y2)."""
    output = dict(boxes=torch.tensor([[1.0, 2.0, 5.0, 7.0]]), labels=torch.tensor([1]), scores=torch.tensor([0.5]))
    detections_to_coco(output, 42, cats_and_dogs.category_id)
    assert output["boxes"].tolist() == [[1.0, 2.0, 5.0, 7.0]]


# ------------------------------------------------------------------------------------------------ box mAP
def _square(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(SIZE, bool)
    mask[top : top + side, left : left + side] = True
    return mask


# The ground-truth objects: A is 40 x 40 at x, y = 10, 10 (area 1600, "medium": 32^2 < 1600 < 96^2); B is 30 x 30
# at x, y = 50, 60 (area 900, "small").
A, B = _square(10, 10, 40), _square(60, 50, 30)
BOX_A, BOX_B = [10, 10, 50, 50], [50, 60, 80, 90]  # as x1, y1, x2, y2


def _ground_truth(tmp_path, labels: list[int], masks: list[np.ndarray]) -> CocoImages:
    """One 100 x 100 image (id 1) holding `masks` of classes 1 "a" and 2 "b", written as a COCO file."""
    sample = ("image", np.zeros((*SIZE, 3), np.uint8), np.array(labels), np.stack(masks))
    root = write_dataset(tmp_path / "gt", ("a", "b"), [sample])
    return CocoImages(root / "annotations.json", root / "images")


def _map(source: CocoImages, detections: list[tuple], iou_type: str = "bbox") -> dict[str, float]:
    """COCO metrics of one image's detections (label, score, x1, y1, x2, y2[, (H, W) mask probabilities]) as
    `evaluate_detection` computes them: through `detections_to_coco`, then `coco_metrics`."""
    output = dict(
        labels=torch.tensor([d[0] for d in detections]),
        scores=torch.tensor([d[1] for d in detections]),
        boxes=torch.tensor([d[2] for d in detections], dtype=torch.float32),
    )
    if iou_type == "segm":
        output["masks"] = torch.stack([torch.as_tensor(d[3], dtype=torch.float32) for d in detections])[:, None]
    boxes, masks = detections_to_coco(output, 1, source.category_id)
    metrics = coco_metrics(source, boxes if iou_type == "bbox" else masks, iou_type, [1])
    return {k.removeprefix(f"{iou_type}_"): v for k, v in metrics.items()}


def test_a_perfect_detection_scores_1(tmp_path):
    source = _ground_truth(tmp_path, [1], [A])
    metrics = _map(source, [(1, 0.9, BOX_A)])
    # IoU 1 clears every threshold, recall 1 at precision 1. A is medium: the small and large buckets have no
    # ground truth (-1).
    assert metrics == pytest.approx(dict(
        mAP=1.0, mAP_50=1.0, mAP_75=1.0, mAP_s=-1.0, mAP_m=1.0, mAP_l=-1.0,
        mAR_1=1.0, mAR_10=1.0, mAR_100=1.0, mAR_s=-1.0, mAR_m=1.0, mAR_l=-1.0,
    ), abs=1e-9)  # fmt: skip


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        # Shifted right by d, A's box keeps (40 - d) x 40 of its 1600 pixels: IoU = (40 - d) / (40 + d).
        # d = 4: IoU 36/44 = 0.818 clears 0.50 ... 0.80, 7 of the 10 thresholds.
        ([14, 10, 54, 50], dict(mAP=0.7, mAP_50=1.0, mAP_75=1.0)),
        # d = 9: IoU 31/49 = 0.633 clears 0.50, 0.55, 0.60: 3 of 10.
        ([19, 10, 59, 50], dict(mAP=0.3, mAP_50=1.0, mAP_75=0.0)),
        # The left half of A: IoU 800/1600 = 0.5 exactly, which matches at 0.50 (IoU >= threshold) only: 1 of 10.
        ([10, 10, 30, 50], dict(mAP=0.1, mAP_50=1.0, mAP_75=0.0)),
        # A little less than half: IoU 760/1600 = 0.475 matches nowhere.
        ([10, 10, 29, 50], dict(mAP=0.0, mAP_50=0.0, mAP_75=0.0)),
    ],
)
def test_map_counts_the_iou_thresholds_a_detection_clears(tmp_path, box, expected):
    source = _ground_truth(tmp_path, [1], [A])
    metrics = _map(source, [(1, 0.9, box)])
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("b_label", "b_score", "expected"),
    [
        (2, 0.8, 1.0),  # both right: AP_a = AP_b = 1
        # B detected as an "a": class b has ground truth and no detection, AP_b = 0. For class a the detection on
        # B overlaps nothing (a false positive) but ranks below the hit on A, which already reached recall 1 at
        # precision 1: AP_a = 1. mAP = (1 + 0) / 2.
        (1, 0.8, 0.5),
        # The same false positive ranked first: class a's precision is 0/1, then 1/2 at recall 1, interpolated to
        # 1/2 at every recall: AP_a = 0.5, AP_b = 0, mAP = 0.25.
        (1, 0.95, 0.25),
    ],
)
def test_a_detection_of_the_wrong_class_scores_0_for_its_object(tmp_path, b_label, b_score, expected):
    source = _ground_truth(tmp_path, [1, 2], [A, B])
    metrics = _map(source, [(1, 0.9, BOX_A), (b_label, b_score, BOX_B)])
    assert metrics["mAP"] == pytest.approx(expected, abs=1e-9)
    assert metrics["mAP_50"] == pytest.approx(expected, abs=1e-9)  # boxes are exact: the same at every threshold


def test_a_duplicate_detection_is_a_false_positive(tmp_path):
    source = _ground_truth(tmp_path, [1, 1], [A, B])  # two objects of class a
    # A hit on A (0.9), a second detection of A (0.8), a hit on B (0.7). The duplicate finds A taken: a false
    # positive. In score order: TP, FP, TP; recall 1/2, 1/2, 1; precision 1, 1/2, 2/3, interpolated 1, 2/3, 2/3.
    # Recalls 0, 0.01, ..., 0.50 (51 of the 101) read precision 1, recalls 0.51 ... 1 (50) read 2/3:
    # AP = (51 + 50 * 2/3) / 101 = 253/303 = 0.83498, the same at every threshold since the boxes are exact.
    metrics = _map(source, [(1, 0.9, BOX_A), (1, 0.8, BOX_A), (1, 0.7, BOX_B)])
    assert metrics["mAP"] == pytest.approx(253 / 303, abs=1e-6)
    assert metrics["mAP_75"] == pytest.approx(253 / 303, abs=1e-6)
    # One detection per image (mAR_1) finds 1 of the 2 objects; 100 find both.
    assert (metrics["mAR_1"], metrics["mAR_100"]) == pytest.approx((0.5, 1.0), abs=1e-9)
    # Ranked below both hits, the duplicate comes after recall 1 and costs nothing.
    metrics = _map(source, [(1, 0.9, BOX_A), (1, 0.8, BOX_B), (1, 0.7, BOX_A)])
    assert metrics["mAP"] == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------- mask mAP
def test_mask_map_scores_the_masks_not_the_boxes(tmp_path):
    # Ground truth: A less its top-left 20 x 18 corner, an L of 1600 - 360 = 1240 pixels whose tight box is
    # still A's.
    corner = np.zeros(SIZE, bool)
    corner[10:30, 10:28] = True
    source = _ground_truth(tmp_path, [1], [A & ~corner])
    # Predicted probabilities 0.9 on the L and 0.5 on the corner: the mask (> 0.5) is the L exactly, mask IoU 1.
    exact = np.where(A & ~corner, 0.9, np.where(corner, 0.5, 0.0))
    assert _map(source, [(1, 0.9, BOX_A, exact)], "segm")["mAP"] == pytest.approx(1.0, abs=1e-9)
    # 0.9 on the corner too: the predicted mask is all of A, mask IoU 1240/1600 = 0.775, which clears
    # 0.50 ... 0.75, 6 of the 10 thresholds: mask mAP 0.6 while its box is A's exactly (box mAP 1).
    square = np.where(A, 0.9, 0.0)
    metrics = _map(source, [(1, 0.9, BOX_A, square)], "segm")
    assert {k: metrics[k] for k in ("mAP", "mAP_50", "mAP_75")} == pytest.approx(
        dict(mAP=0.6, mAP_50=1.0, mAP_75=1.0), abs=1e-9
    )
    assert _map(source, [(1, 0.9, BOX_A)], "bbox")["mAP"] == pytest.approx(1.0, abs=1e-9)


def test_nothing_detected_scores_0(tmp_path):
    source = _ground_truth(tmp_path, [1], [A])
    assert set(coco_metrics(source, [], "bbox", [1]).values()) == {0.0}


# ---------------------------------------------------------------------------------------------------- mIoU
class FixedPrediction(nn.Module):
    """A segmenter that predicts the same class map for any input of its size (one-hot logits)."""

    def __init__(self, prediction: np.ndarray, num_classes: int) -> None:
        super().__init__()
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(prediction).long(), num_classes)  # (H, W, C)
        self.register_buffer("logits", one_hot.permute(2, 0, 1)[None].float())  # (1, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == self.logits.shape[-2:], "the test feeds images at the mask's own size"
        return self.logits.expand(len(x), -1, -1, -1)


def _mask_folder(tmp_path, masks: list[np.ndarray]) -> MaskFolderImages:
    """Class-id masks of classes 1 "a", 2 "b", 3 "c" (class 0 is background); image i is filled with the value i."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i, mask in enumerate(masks):
        Image.fromarray(np.full((*mask.shape, 3), i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    return MaskFolderImages(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"])


def test_miou_ignores_255_and_classes_absent_from_both(tmp_path):
    I = IGNORE_INDEX
    truth = np.array(
        [
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [0, 0, I, I, 2, 2],
            [0, 0, I, I, 2, 2],
        ]
    )
    prediction = np.array(
        [
            [0, 0, 1, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 1, 1, 2, 0],
            [0, 0, 1, 2, 2, 2],
        ]
    )
    source = _mask_folder(tmp_path, [truth])
    metrics = evaluate_segmentation(FixedPrediction(prediction, 4), source, 4, torch.device("cpu"))
    # Counted over the 20 pixels not labelled 255 (the 4 predicted 1, 1, 1, 2 under it count nowhere):
    # background: truth 10, predicted 10, both 9 -> IoU 9 / (10 + 10 - 9) = 9/11
    # a: truth 6, predicted 7 (those 6 and pixel (0, 2)), both 6 -> 6/7 (6/10 if the 3 ignored pixels counted)
    # b: truth 4, predicted 3, both 3 -> 3/4 (3/5 if the ignored one counted)
    # c: in neither -> NaN, and left out of the mean
    iou = dict(background=9 / 11, a=6 / 7, b=3 / 4)
    assert {k: metrics[f"IoU_{k}"] for k in iou} == pytest.approx(iou, abs=1e-6)
    assert np.isnan(metrics["IoU_c"])
    assert metrics["mIoU"] == pytest.approx((9 / 11 + 6 / 7 + 3 / 4) / 3, abs=1e-6)
    assert metrics["aAcc"] == pytest.approx(18 / 20, abs=1e-6)  # 9 + 6 + 3 right of 20


class PredictionPerImage(nn.Module):
    """Predicts `predictions[i]` for image i, which `_mask_folder` fills with the value i."""

    def __init__(self, predictions: list[np.ndarray], num_classes: int) -> None:
        super().__init__()
        self.fixed = nn.ModuleList(FixedPrediction(p, num_classes) for p in predictions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fixed[round(x[0, 0, 0, 0].item() * 255)](x)


def test_miou_pools_pixels_over_images(tmp_path):
    """IoU is the intersection over the union of all images' pixels together, not a mean of per-image IoUs."""
    all_a = np.ones((4, 6), np.uint8)
    a_corner = np.zeros((4, 6), np.uint8)
    a_corner[:2, :2] = 1
    source = _mask_folder(tmp_path, [all_a, a_corner])
    # Image 0 (all a) is predicted all a; image 1 (a in a 2 x 2 corner) is predicted all background.
    # a: intersection 24 + 0, union 24 + 4 -> 24/28 = 6/7 (a mean of per-image IoUs would give (1 + 0) / 2).
    # background: not in image 0's truth or prediction; image 1: truth 20, predicted 24, both 20 -> 20/24.
    # b, c: in neither -> NaN. Pixel accuracy: 24 + 20 of 48.
    model = PredictionPerImage([np.ones((4, 6), int), np.zeros((4, 6), int)], 4)
    metrics = evaluate_segmentation(model, source, 4, torch.device("cpu"))
    assert metrics["IoU_a"] == pytest.approx(6 / 7, abs=1e-6)
    assert metrics["IoU_background"] == pytest.approx(20 / 24, abs=1e-6)
    assert np.isnan(metrics["IoU_b"]) and np.isnan(metrics["IoU_c"])
    assert metrics["mIoU"] == pytest.approx((6 / 7 + 20 / 24) / 2, abs=1e-6)
    assert metrics["aAcc"] == pytest.approx(44 / 48, abs=1e-6)
