"""poly -> rbox picks the rectangle MMRotate gets from ``cv2.minAreaRect`` (``poly2obb_np`` le90).

Oracles: a hand-computed rectangle for the two-equal-areas example of issue 9; OpenCV itself (a test-only
dependency) on the real DOTA labels and on random quadrilaterals; and the mmrotate-mode DOTA AP recomputed by a
plain loop over shapely polygons with ground-truth rectangles from ``cv2.minAreaRect``.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lsknet.ops import poly_to_rbox, rbox_iou, rbox_to_corners

PI = math.pi


def poly2obb_np_le90(quad: np.ndarray) -> list[float]:
    """MMRotate ``poly2obb_np_le90`` (without its ``w < 2 or h < 2`` rejection) on OpenCV's rectangle."""
    import cv2

    (x, y), (w, h), a = cv2.minAreaRect(np.asarray(quad, np.float32).reshape(4, 2))
    a = a / 180 * np.pi
    if w < h:
        w, h = h, w
        a += np.pi / 2
    while not np.pi / 2 > a >= -np.pi / 2:
        a = a - np.pi if a >= np.pi / 2 else a + np.pi
    return [x, y, w, h, a]


def _real_polys(root: Path) -> np.ndarray:
    rows = []
    for path in sorted(glob.glob(str(root / "dota_devkit_example" / "labelTxt" / "*.txt"))):
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 9:
                try:
                    rows.append([float(v) for v in parts[:8]])
                except ValueError:
                    continue  # header lines
    return np.asarray(rows, np.float32).reshape(-1, 4, 2)


def test_equal_area_rectangles_issue_example_by_hand():
    # 480,245 470,246 466,205 475,203: the rectangles along edge 0->1 (-10, 1) and along edge 3->0 (5, 42) both
    # have area exactly 425; OpenCV returns the one along (5, 42), the last the calipers measure.
    q = torch.tensor([[480.0, 245, 470, 246, 466, 205, 475, 203]])
    pts = q.view(4, 2).double()
    u = torch.tensor([5.0, 42.0], dtype=torch.float64) / math.hypot(5, 42)
    v = torch.stack([-u[1], u[0]])
    pu, pv = pts @ u, pts @ v
    length, width = float(pu.max() - pu.min()), float(pv.max() - pv.min())
    assert length * width == pytest.approx(425.0)
    centre = u * (pu.max() + pu.min()) / 2 + v * (pv.max() + pv.min()) / 2
    theta = math.atan2(42, 5)  # long side along (5, 42), already in le90
    out = poly_to_rbox(q)[0]
    expected = torch.tensor([float(centre[0]), float(centre[1]), length, width, theta], dtype=torch.float32)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)
    # the old rule (first smallest, float64) took the other one
    other = poly_to_rbox(q, method="exact")[0]
    assert abs(float(other[4]) - math.atan2(10, 1)) < 1e-6  # short side along (-10, 1)


@pytest.mark.realdata
def test_real_dota_labels_match_opencv(shared_data: Path):
    pytest.importorskip("cv2")
    polys = _real_polys(shared_data)
    assert len(polys) == 984
    ref = torch.tensor([poly2obb_np_le90(q) for q in polys], dtype=torch.float64)
    got = poly_to_rbox(torch.from_numpy(polys)).double()
    torch.testing.assert_close(got[:, :4], ref[:, :4], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[:, 4], ref[:, 4], atol=1e-6, rtol=0)
    # the objects where the choice matters: a different rectangle with the exact first-minimum rule
    exact = poly_to_rbox(torch.from_numpy(polys).double(), method="exact")
    differ = rbox_iou(exact, ref, aligned=True) < 0.999
    assert 30 <= int(differ.sum()) <= 45


@pytest.mark.parametrize("kind", ["int", "float", "dota_like"])
def test_random_quadrilaterals_match_opencv(kind):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng({"int": 0, "float": 1, "dota_like": 2}[kind])
    if kind == "int":
        q = rng.integers(0, 1000, (500, 4, 2)).astype(np.float32)
    elif kind == "float":
        q = (rng.random((500, 4, 2)) * 100).astype(np.float32)
    else:  # integer-rounded corners of random rectangles, clockwise on screen as in DOTA
        rb = torch.tensor(np.c_[rng.uniform(50, 950, (500, 2)), rng.uniform(4, 80, (500, 2)),
                                rng.uniform(-PI, PI, 500)])  # fmt: skip
        q = np.round(rbox_to_corners(rb).numpy()).astype(np.float32)
    from lsknet.ops.min_area_rect import min_area_rect_opencv

    ref = np.array([[*r[0], *r[1], r[2]] for r in map(cv2.minAreaRect, q)], dtype=np.float64)
    got = min_area_rect_opencv(torch.from_numpy(q)).numpy()
    np.testing.assert_array_equal(got, ref)  # float for float


def test_degenerate_quadrilaterals_match_opencv():
    cv2 = pytest.importorskip("cv2")
    q = np.array(
        [
            [[3, 3], [3, 3], [3, 3], [3, 3]],  # a point
            [[0, 0], [5, 0], [10, 0], [5, 0]],  # a horizontal segment
            [[2, 1], [2, 7], [2, 4], [2, 7]],  # a vertical segment
            [[0, 0], [6, 2], [3, 1], [1, 5]],  # a collinear middle point
            [[0, 0], [10, 0], [3, 2], [5, 8]],  # a point inside the triangle
        ],
        np.float32,
    )
    from lsknet.ops.min_area_rect import min_area_rect_opencv

    ref = np.array([[*r[0], *r[1], r[2]] for r in map(cv2.minAreaRect, q)], dtype=np.float64)
    np.testing.assert_array_equal(min_area_rect_opencv(torch.from_numpy(q)).numpy(), ref)


def _reference_mmrotate_ap(dets, gt, classes, iou_thr=0.5):
    """eval_rbbox_map semantics re-derived: GT rectangles from cv2.minAreaRect (difficult objects count), detections
    by descending score, best IoU among the image's objects, TP when >= iou_thr and unmatched, VOC07 11-point AP."""
    from shapely.geometry import Polygon

    out = {}
    for name in classes:
        recs, npos = {}, 0
        for image_id, ann in gt.items():
            sel = [i for i, n in enumerate(ann.names) if n == name]
            rects = [poly2obb_np_le90(ann.polys[i]) for i in sel]
            shapes = [Polygon(c) for c in rbox_to_corners(torch.tensor(rects, dtype=torch.float64).view(-1, 5)).numpy()]
            recs[image_id] = {"shapes": shapes, "used": [False] * len(sel)}
            npos += len(sel)
        if npos == 0:
            out[name] = None
            continue
        d = dets.get(name)
        order = np.argsort(-d.scores, kind="stable") if d is not None else []
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for k, idx in enumerate(order):
            r = recs[str(d.image_ids[idx])]
            bb = Polygon(d.polys[idx])
            best, jbest = -1.0, -1
            for j, g in enumerate(r["shapes"]):
                inter = bb.intersection(g).area
                iou = inter / (bb.area + g.area - inter)
                if iou > best:
                    best, jbest = iou, j
            if best >= iou_thr and not r["used"][jbest]:
                tp[k], r["used"][jbest] = 1, True
            else:
                fp[k] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        out[name] = sum((np.max(prec[rec >= t]) if np.any(rec >= t) else 0.0) / 11 for t in np.arange(0, 1.1, 0.1))
    return out


@pytest.mark.realdata
@pytest.mark.parametrize("iou_thr", [0.5, 0.9])
def test_mmrotate_mode_ap_matches_rederivation_with_opencv_rectangles(shared_data: Path, iou_thr: float):
    pytest.importorskip("cv2")
    pytest.importorskip("shapely")
    from lsknet.data.dota import DOTA_V1_CLASSES, Task1Detections, read_labeltxt_dir
    from lsknet.evaluation.dota import evaluate_dota

    gt = read_labeltxt_dir(shared_data / "dota_devkit_example" / "labelTxt", DOTA_V1_CLASSES)
    # detections: rectangles near the objects (rbox corners, so their own rectangle is unambiguous), random scores
    rng = np.random.default_rng(3)
    per: dict[str, list] = {}
    for image_id, ann in gt.items():
        rb = poly_to_rbox(torch.from_numpy(ann.polys).double(), method="exact")
        for k, name in enumerate(ann.names):
            if rng.random() < 0.3:
                continue
            jit = rb[k].clone()  # half exactly the object's first-minimum rectangle, half jittered
            if rng.random() < 0.5:
                jit[:2] += torch.from_numpy(rng.normal(0, 0.12, 2)) * jit[3]
                jit[2:4] *= torch.from_numpy(rng.uniform(0.85, 1.15, 2))
                jit[4] += float(rng.normal(0, 0.08))
            per.setdefault(name, []).append((image_id, float(rng.random()), rbox_to_corners(jit).numpy()))
    dets = {
        c: Task1Detections(np.array([r[0] for r in rows], dtype=object), np.array([r[1] for r in rows]),
                           np.stack([r[2] for r in rows]))  # fmt: skip
        for c, rows in per.items()
    }
    ours = evaluate_dota(dets, gt, DOTA_V1_CLASSES, iou_thr=iou_thr, mode="mmrotate", coco=False)
    ref = _reference_mmrotate_ap(dets, gt, DOTA_V1_CLASSES, iou_thr)
    for c in DOTA_V1_CLASSES:
        assert ours.per_class[c] == pytest.approx(ref[c], abs=1e-9), c
