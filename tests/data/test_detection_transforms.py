"""The official training transforms, each against geometry derived by hand from MMRotate 0.3.4's RRandomFlip,
PolyRandomRotate and RResize (shapely polygons as the oracle), plus the size filter counts and the dataset's
load-time filter / redraw."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from shapely.geometry import Point, Polygon

from lsknet.data.detection import (
    DOTADetectionDataset,
    RandomRotate,
    Resize,
    dflip,
    filter_objects,
    hflip,
    refresh,
    rotate,
    train_transforms,
    vflip,
)
from lsknet.data.dota import DOTAAnnotation, write_labeltxt


def _corners(cx, cy, w, h, a):
    """Rectangle corners written out by hand: width axis along (cos a, sin a), y down."""
    ux, uy = math.cos(a) * w / 2, math.sin(a) * w / 2
    vx, vy = -math.sin(a) * h / 2, math.cos(a) * h / 2
    return [(cx - ux - vx, cy - uy - vy), (cx + ux - vx, cy + uy - vy), (cx + ux + vx, cy + uy + vy),
            (cx - ux + vx, cy - uy + vy)]  # fmt: skip


def _sample(rboxes, h=96, w=128, labels=None):
    polys = torch.tensor([_corners(*r) for r in rboxes], dtype=torch.float32).reshape(-1, 4, 2)
    n = len(rboxes)
    return refresh({
        "image": torch.rand(3, h, w),
        "polys": polys,
        "labels": torch.as_tensor(labels if labels is not None else list(range(n)), dtype=torch.int64),
        "difficult": torch.zeros(n, dtype=torch.bool),
        "image_id": "x",
        "size": (h, w),
    })  # fmt: skip


def _same_shape(poly, corners) -> float:
    a, b = Polygon(np.asarray(poly, np.float64)), Polygon(corners)
    return a.intersection(b).area / a.union(b).area


def _norm_le90(a):
    return (a + math.pi / 2) % math.pi - math.pi / 2


RECT = (90, 180, -90, -180)  # PolyRandomRotate.discrete_range
RBOXES = [(30.0, 20.0, 24.0, 10.0, 0.3), (90.0, 60.0, 40.0, 12.0, -1.1), (60.0, 45.0, 16.0, 8.0, 0.0)]


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "diagonal"])
def test_flips_are_rrandomflip_le90(direction):
    s = _sample(RBOXES)
    h, w = s["size"]
    out = {"horizontal": hflip, "vertical": vflip, "diagonal": dflip}[direction](s)
    for k, (cx, cy, bw, bh, a) in enumerate(RBOXES):
        # RRandomFlip.bbox_flip for le90: x -> W - x - 1 and/or y -> H - y - 1; angle -> norm(pi - a) unless diagonal
        ex, ey, ea = cx, cy, a
        if direction in ("horizontal", "diagonal"):
            ex = w - cx - 1
        if direction in ("vertical", "diagonal"):
            ey = h - cy - 1
        if direction != "diagonal":
            ea = _norm_le90(math.pi - a)
        assert _same_shape(out["polys"][k], _corners(ex, ey, bw, bh, ea)) > 0.9999
        torch.testing.assert_close(out["rboxes"][k, :4], torch.tensor([ex, ey, bw, bh]), atol=1e-3, rtol=0)
    # pixels: a plain mirror (mmcv.imflip)
    image = s["image"]
    expected = {"horizontal": image.flip(-1), "vertical": image.flip(-2), "diagonal": image.flip(-1).flip(-2)}
    torch.testing.assert_close(out["image"], expected[direction])


def test_rotation_by_90_degrees_by_hand():
    s = _sample([(25.0, 17.5, 30.0, 15.0, 0.0)], h=96, w=128)
    out = rotate(s, 90.0)
    # cv2.getRotationMatrix2D((64, 48), 90, 1): (x, y) -> (y - 48 + 64, -(x - 64) + 48); the long side turns vertical
    assert _same_shape(out["polys"][0], _corners(33.5, 87.0, 30.0, 15.0, -math.pi / 2)) > 0.9999
    torch.testing.assert_close(out["rboxes"][0], torch.tensor([33.5, 87.0, 30.0, 15.0, -math.pi / 2]), atol=1e-4,
                               rtol=0)  # fmt: skip
    assert out["size"] == (96, 128)  # auto_bound=False: the canvas is kept


def test_rotation_by_any_angle_moves_image_and_boxes_together():
    h = w = 96
    s = _sample([(40.0, 50.0, 30.0, 12.0, 0.4)], h=h, w=w)
    ys, xs = np.mgrid[0:h, 0:w]
    source = Polygon(s["polys"][0].numpy())
    inside = [source.contains(Point(x + 0.5, y + 0.5)) for x, y in zip(xs.ravel(), ys.ravel())]
    s["image"] = torch.tensor(inside, dtype=torch.float32).reshape(1, h, w).expand(3, h, w).clone()
    out = rotate(s, 37.0)
    drawn = (out["image"][0] > 0.5).numpy()
    box = Polygon(out["polys"][0].numpy())
    hits = sum(box.contains(Point(x + 0.5, y + 0.5)) for y, x in zip(*np.nonzero(drawn)))
    assert drawn.sum() > 200 and hits / drawn.sum() > 0.95
    assert abs(box.area - source.area) < 1e-3 * source.area


def test_size_filter_counts_even_without_rotation():
    rboxes = [
        (30.0, 30.0, 6.0, 6.0, 0.0),    # kept: both sides > 5
        (60.0, 30.0, 10.0, 5.0, 0.0),   # dropped: h = 5 is not > 5
        (90.0, 30.0, 20.0, 4.9, 0.3),   # dropped
        (0.0, 60.0, 20.0, 10.0, 0.0),   # dropped: centre on the border (strict inequality)
        (64.0, 95.9, 20.0, 10.0, 0.0),  # kept: centre inside
        (130.0, 40.0, 20.0, 10.0, 0.0),  # dropped: centre outside
    ]
    s = _sample(rboxes)
    assert filter_objects(s)["labels"].tolist() == [0, 4]
    assert filter_objects(s, min_size=3.0)["labels"].tolist() == [0, 1, 2, 4]
    out = RandomRotate(p=0.0, min_size=5.0)(s)  # PolyRandomRotate filters even when it does not rotate
    assert out["labels"].tolist() == [0, 4] and out["polys"].shape == (2, 4, 2)
    assert RandomRotate(p=0.0)(_sample([(60.0, 30.0, 10.0, 5.0, 0.0)])) is None  # nothing left: rejected
    empty = _sample([])
    assert RandomRotate(p=0.0)(empty) is empty or len(RandomRotate(p=0.0)(empty)["labels"]) == 0


def test_rect_classes_rotate_by_a_discrete_angle_for_any_image_size():
    s = _sample([(64.0, 48.0, 30.0, 12.0, 0.0), (40.0, 40.0, 10.0, 8.0, 0.2)], h=96, w=128, labels=[0, 2])
    t = RandomRotate(p=1.0, angle_range=180, rect_classes=[2])
    seen = set()
    for seed in range(12):
        random.seed(seed)
        out = t(s)
        # the first object sits at the centre: only its angle changes, by one of 90, 180, -90, -180
        angle = math.degrees(float(out["rboxes"][0, 4]))
        # (a turn by a degrees counter-clockwise on screen is a rectangle at angle -a with y pointing down)
        poly = out["polys"][0]
        candidates = [a for a in RECT if _same_shape(poly, _corners(64.0, 48.0, 30.0, 12.0, math.radians(-a))) > 0.999]
        assert candidates, angle
        seen.add(round(abs(angle)))
    assert seen == {0, 90}  # both the 180 and the +-90 turns happen on a non-square image
    free = RandomRotate(p=1.0, angle_range=180, rect_classes=[5])  # class not present: continuous angles
    random.seed(0)
    angles = [math.degrees(float(free(s)["rboxes"][0, 4])) for _ in range(5)]
    assert any(min(abs(a % 90), 90 - abs(a % 90)) > 1 for a in angles)


def test_resize_keep_ratio_like_rresize():
    s = _sample([(30.0, 20.0, 24.0, 10.0, 0.3)], h=333, w=500)
    out = Resize(800, keep_ratio=True)(s)  # scale 800 / 500 = 1.6; mmcv: int(333 * 1.6 + 0.5) = 533
    assert out["size"] == (533, 800)
    out = Resize((1024, 1024), keep_ratio=True)(_sample([], h=1024, w=600))
    assert out["size"] == (1024, 600)


def test_train_transforms_are_the_official_pipeline():
    classes = ("plane", "storage-tank", "ship", "roundabout")
    steps = train_transforms(classes, size=1024, rotate_p=0.5).transforms
    assert [type(t).__name__ for t in steps] == ["Resize", "RandomFlip", "RandomRotate"]
    assert steps[0].keep_ratio and steps[0].size == (1024, 1024)
    assert steps[1].probs == (0.25, 0.25, 0.25)
    assert steps[2].p == 0.5 and steps[2].min_size == 5.0 and steps[2].rect_classes.tolist() == [1, 3]


def test_dataset_drops_objects_below_2px_at_load_and_redraws_rejected_samples(tmp_path):
    (tmp_path / "images").mkdir()
    from PIL import Image

    objects = {"a": [(30, 30, 20, 1.5), (60, 60, 3, 3)], "b": [(50, 50, 1, 1)], "c": [(40, 40, 30, 20)]}
    for name, objs in objects.items():
        Image.new("RGB", (96, 96)).save(tmp_path / "images" / f"{name}.png")
        polys = np.array([_corners(cx, cy, w, h, 0.0) for cx, cy, w, h in objs], np.float64)
        write_labeltxt(tmp_path / "labelTxt" / f"{name}.txt", DOTAAnnotation(polys, ["plane"] * len(objs),
                                                                            np.zeros(len(objs), np.int64)))  # fmt: skip
    ds = DOTADetectionDataset(tmp_path, classes=["plane"], filter_empty=True, min_size=2.0)
    assert ds.image_ids == ["a", "c"]  # b's only object is below 2 px: the image has no objects left
    assert len(ds.annotations["a"]) == 1 and sum(ds.report.counts.values()) == 2
    # a's 3 x 3 object does not pass the > 5 px filter: the sample is rejected and another image drawn
    ds.transforms = train_transforms(["plane"], rotate_p=1e-9, flip=False)
    random.seed(0)
    sample = ds[0]
    assert sample["image_id"] == "c" and ds.redraws >= 1


def _shapely_sides(poly) -> tuple[float, float, float, float]:
    """Centre and the two sides of shapely's minimum rotated rectangle (an independent min-area rectangle)."""
    rect = np.asarray(Polygon(np.asarray(poly, np.float64)).minimum_rotated_rectangle.exterior.coords)[:4]
    a, b = np.linalg.norm(rect[1] - rect[0]), np.linalg.norm(rect[2] - rect[1])
    c = rect.mean(0)
    return float(c[0]), float(c[1]), float(a), float(b)


@pytest.mark.realdata
def test_filters_on_real_dota_labels(shared_data):
    root = shared_data / "dota_devkit_example"
    raw = DOTADetectionDataset(root)
    ds = DOTADetectionDataset(root, min_size=2.0)
    for image_id in ds.image_ids:
        sides = [_shapely_sides(p) for p in raw.annotations[image_id].polys]
        expected_kept = sum(min(a, b) >= 2.0 for _, _, a, b in sides)  # MMRotate: w or h < 2 is dropped at load
        assert len(ds.annotations[image_id]) == expected_kept
        sample = ds[ds.image_ids.index(image_id)]
        h, w = sample["size"]
        kept = filter_objects(sample)
        expected = sum(0 < cx < w and 0 < cy < h and min(a, b) > 5.0
                       for cx, cy, a, b in (_shapely_sides(p) for p in sample["polys"].numpy()))  # fmt: skip
        assert len(kept["labels"]) == expected
