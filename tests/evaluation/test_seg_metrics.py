"""Segmentation metrics against confusion matrices computed by hand."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from lsknet.evaluation.segmentation import (
    ConfusionMatrix,
    confusion_matrix,
    metrics_from_confusion,
    write_report,
)

# 2x3 crafted case, K = 3, 255 ignored. Counted pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2); (255, 0) ignored.
GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])
HAND_CM = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 1]])


def test_confusion_matrix_by_hand():
    np.testing.assert_array_equal(confusion_matrix(PRED, GT, 3), HAND_CM)
    # torch input gives the same counts
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(GT), 3), HAND_CM)


def test_metrics_by_hand():
    m = metrics_from_confusion(HAND_CM)
    # IoU: class0 TP1 FP0 FN1 -> 1/2; class1 TP2 FP1 FN0 -> 2/3; class2 -> 1
    assert m["IoU"] == pytest.approx([0.5, 2 / 3, 1.0])
    # F1 = 2TP / (2TP + FP + FN): 2/3, 4/5, 1
    assert m["F1"] == pytest.approx([2 / 3, 0.8, 1.0])
    assert m["mIoU"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["mF1"] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert m["OA"] == pytest.approx(4 / 5)
    assert m["pixels"] == 5
    assert m["precision"] == pytest.approx([1.0, 2 / 3, 1.0])
    assert m["recall"] == pytest.approx([0.5, 1.0, 1.0])


def test_absent_class_is_none_and_left_out_of_means():
    cm = np.zeros((4, 4), dtype=np.int64)
    cm[:3, :3] = HAND_CM
    m = metrics_from_confusion(cm)
    assert m["IoU"][3] is None and m["F1"][3] is None
    assert m["mIoU"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def test_class_predicted_but_absent_from_gt_has_zero_iou():
    # gt all class 0, prediction says class 1 on one pixel: class 1 IoU = 0 / (0 + 1 + 0) = 0 (defined)
    m = metrics_from_confusion(confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2))
    assert m["IoU"] == pytest.approx([0.5, 0.0])
    assert m["mIoU"] == pytest.approx(0.25)


def test_excluded_classes_by_index_and_name():
    m = metrics_from_confusion(HAND_CM, class_names=["road", "building", "clutter"], exclude=["clutter"])
    assert m["excluded"] == ["clutter"]
    assert m["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["mF1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["OA"] == pytest.approx(0.8)  # OA still counts every class
    m2 = metrics_from_confusion(HAND_CM, exclude=[2])
    assert m2["mIoU"] == m["mIoU"]


def test_accumulation_over_batches_equals_single_matrix():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(3, 8, 8))
    gt[0, 0, :] = 255
    pred = rng.integers(0, 4, size=(3, 8, 8))
    acc = ConfusionMatrix(4)
    for i in range(3):
        acc.update(pred[i], gt[i])
    # oracle: explicit per-pixel loop
    hand = np.zeros((4, 4), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            hand[g, p] += 1
    np.testing.assert_array_equal(acc.matrix, hand)


def test_out_of_range_labels_raise():
    with pytest.raises(ValueError, match="target labels out of range"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3)
    with pytest.raises(ValueError, match="predicted labels out of range"):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)


def test_report_files(tmp_path):
    m = metrics_from_confusion(HAND_CM, class_names=["a", "b", "c"])
    paths = write_report(m, HAND_CM, tmp_path, prefix="val_")
    rows = list(csv.reader(open(paths["csv"])))
    assert rows[0] == ["gt\\pred", "a", "b", "c"]
    assert [int(v) for v in rows[1][1:]] == [1, 1, 0]
    assert paths["png"].stat().st_size > 1000
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
