"""One Task1 conversion (lsknet.data.task1.results_to_task1) for evaluation, the demo and the predictor's files."""

from __future__ import annotations

import math

import numpy as np
import torch

from lsknet.data import dota, task1
from lsknet.data.task1 import read_task1_dir, results_to_task1
from lsknet.inference.predictor import Detections, write_outputs
from lsknet.tasks import detection


def _corners_by_hand(cx, cy, w, h, theta):
    """Corners of a rotated rectangle: centre +- half extents along the width axis (cos t, sin t) and the height
    axis (-sin t, cos t); returned as a set of rounded points (the order is the converter's business)."""
    u = np.array([math.cos(theta), math.sin(theta)]) * w / 2
    v = np.array([-math.sin(theta), math.cos(theta)]) * h / 2
    c = np.array([cx, cy])
    return {tuple(np.round(p, 6)) for p in (c - u - v, c + u - v, c + u + v, c - u + v)}


def test_conversion_groups_by_class_and_keeps_order():
    results = {
        "img_b": {"rboxes": torch.tensor([[10.0, 20.0, 4.0, 2.0, 0.0], [50.0, 50.0, 10.0, 6.0, 0.5]]),
                  "scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([1, 0])},
        "img_a": {"rboxes": torch.tensor([[30.0, 40.0, 8.0, 4.0, -0.3]]), "scores": torch.tensor([0.7]),
                  "labels": torch.tensor([1])},
        "empty": {"rboxes": torch.zeros(0, 5), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    }  # fmt: skip
    out = results_to_task1(results, ("car", "ship", "plane"))
    assert list(out) == ["car", "ship", "plane"] and len(out["plane"]) == 0
    assert out["ship"].image_ids.tolist() == ["img_b", "img_a"]  # image order kept
    np.testing.assert_allclose(out["ship"].scores, [0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(out["car"].scores, [0.4], rtol=1e-6)
    assert {tuple(np.round(p, 6)) for p in out["car"].polys[0]} == _corners_by_hand(50, 50, 10, 6, 0.5)
    assert {tuple(np.round(p, 6)) for p in out["ship"].polys[1]} == _corners_by_hand(30, 40, 8, 4, -0.3)
    assert out["ship"].polys.dtype == np.float64


def test_one_conversion_everywhere(tmp_path):
    assert detection.results_to_task1 is task1.results_to_task1  # the task uses the data-layer function
    assert dota.Task1Detections is task1.Task1Detections  # old import path still works
    classes = ("car", "ship")
    det = Detections("scene", torch.tensor([[12.5, 7.25, 6.0, 3.0, 0.2]]), torch.tensor([0.8]), torch.tensor([1]),
                     classes, (20, 30))  # fmt: skip
    write_outputs([det], tmp_path, json_file=False, png=False)
    back = read_task1_dir(tmp_path / "task1", classes)
    direct = results_to_task1({"scene": {"rboxes": det.rboxes, "scores": det.scores, "labels": det.labels}}, classes)
    assert back["ship"].image_ids.tolist() == ["scene"] and len(back["car"]) == 0
    np.testing.assert_allclose(back["ship"].polys, direct["ship"].polys, atol=0.005)  # files hold 2 decimals
