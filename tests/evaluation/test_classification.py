"""Classification metrics and report files, checked against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lsknet.evaluation.classification import (
    confusion_matrix,
    per_class_accuracy,
    read_confusion_csv,
    summarize_confusion,
    topk_accuracy,
    write_classification_report,
    write_confusion_csv,
)


def test_topk_accuracy_hand_example():
    scores = torch.tensor(
        [
            [0.1, 0.7, 0.2],  # true 1: top1 hit
            [0.5, 0.3, 0.2],  # true 1: top2 hit
            [0.6, 0.3, 0.1],  # true 2: miss at top2
            [0.2, 0.2, 0.6],  # true 2: top1 hit
        ]
    )
    targets = torch.tensor([1, 1, 2, 2])
    assert topk_accuracy(scores, targets, 1) == pytest.approx(0.5)
    assert topk_accuracy(scores, targets, 2) == pytest.approx(0.75)
    assert topk_accuracy(scores, targets, 5) == pytest.approx(1.0)  # k clipped to C


def test_confusion_matrix_rows_are_truth():
    matrix = confusion_matrix([0, 1, 1, 2, 0], [0, 0, 1, 2, 2], 3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(matrix, expected)


def test_per_class_accuracy_and_summary_with_an_absent_class():
    matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    acc = per_class_accuracy(matrix)
    assert acc[0] == pytest.approx(0.75) and math.isnan(acc[1]) and acc[2] == pytest.approx(0.5)
    summary = summarize_confusion(matrix, ["a", "b", "c"])
    assert summary["accuracy"] == pytest.approx(5 / 8)
    assert summary["mean_class_accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    assert summary["per_class_accuracy"] == {"a": 0.75, "b": None, "c": 0.5}
    assert summary["support"] == {"a": 4, "b": 0, "c": 4}


def test_confusion_csv_round_trip_and_layout(tmp_path):
    matrix = np.array([[5, 0], [1, 3]])
    path = write_confusion_csv(matrix, ["water", "forest"], tmp_path / "cm.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "true\\predicted,water,forest,support,accuracy"
    assert lines[2] == "forest,1,3,4,0.750000"
    back, classes = read_confusion_csv(path)
    np.testing.assert_array_equal(back, matrix)
    assert classes == ["water", "forest"]


def test_report_writes_csv_png_and_json_with_nan_as_null(tmp_path):
    matrix = np.array([[2, 0, 0], [0, 0, 0], [1, 0, 1]])
    summary = write_classification_report(matrix, ["a", "b", "c"], tmp_path, prefix="val_", extra={"top5": 1.0})
    data = json.loads((tmp_path / "val_metrics.json").read_text())
    assert data["accuracy"] == pytest.approx(0.75) and data["top5"] == 1.0
    assert data["per_class_accuracy"]["b"] is None
    with Image.open(tmp_path / "val_confusion_matrix.png") as image:
        assert image.format == "PNG" and min(image.size) >= 300
    assert summary["confusion_matrix_csv"].endswith("val_confusion_matrix.csv")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
