"""Exact intersection of rotated rectangles in one rectangle's frame (``lsknet.ops.iou._rect_intersection``, what
``nms_rotated`` decides with) against shapely, including the cases that break naive clipping: identical, nested,
thin and far-from-origin boxes, edges on (almost) the same line, float32 quarter turns, pairs whose IoU sits within
1e-6 of the NMS threshold, and axis-aligned grid boxes whose areas must be exact (so exact IoU ties stay ties)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from lsknet.ops import nms_rotated, rbox_to_corners
from lsknet.ops.iou import _rect_frames, _rect_intersection

from .test_nms import greedy_reference


def _ours(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return _rect_intersection(_rect_frames(a), _rect_frames(b)).numpy()


def _shapely(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    pa = shapely.polygons(rbox_to_corners(a.double()).numpy())
    pb = shapely.polygons(rbox_to_corners(b.double()).numpy())
    return shapely.area(shapely.intersection(pa, pb))


def _check(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> None:
    """Both argument orders against shapely, errors relative to the smaller box's area."""
    ref = _shapely(a, b)
    scale = np.minimum((a[:, 2] * a[:, 3]).abs().double().numpy(), (b[:, 2] * b[:, 3]).abs().double().numpy())
    for got in (_ours(a, b), _ours(b, a)):
        err = np.abs(got - ref) / np.maximum(scale, 1e-300)
        assert err.max() <= rtol, (err.max(), int(err.argmax()), got[err.argmax()], ref[err.argmax()])


def _random(n: int, seed: int, spread: float = 50.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * spread
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 0.5
    t = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 4 * math.pi
    return torch.cat([xy, wh, t], 1)


def test_random_pairs_match_shapely():
    a, b = _random(4000, 1), _random(4000, 2)
    assert (_shapely(a, b) > 0).sum() > 1500  # most pairs overlap
    _check(a, b)


def test_identical_nested_and_concentric_boxes():
    a = _random(500, 3)
    _check(a, a.clone())  # identical: the whole box
    np.testing.assert_allclose(_ours(a, a), (a[:, 2] * a[:, 3]).numpy(), rtol=1e-12)
    small = a.clone()
    small[:, 2:4] *= 0.3
    jitter = torch.rand(500, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.5
    small[:, :2] += jitter * 0.2 * a[:, 2:4].min(1).values[:, None]
    _check(a, small)  # nested (inside, away from the centre), both orders
    turned = small.clone()
    turned[:, 4] += 0.7
    _check(a, turned)
    tiny = a.clone()
    tiny[:, 2:4] *= 1e-4  # a tiny box inside around the big one's centre: the full-turn ambiguity
    _check(a, tiny)
    same_rot = a.clone()
    same_rot[:, 4] += math.pi / 2  # a quarter turn about the same centre (square-ish overlap)
    _check(a, same_rot)


def test_thin_boxes_and_crosses():
    a = _random(1000, 5)
    b = a.clone()
    b[:, 3] = a[:, 3] * 1e-3  # thin box through the middle of a, turned: a cross with no corner inside the other
    b[:, 2] = a[:, 2:4].max(1).values * 3
    b[:, 4] += torch.rand(1000, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * math.pi
    _check(a, b)
    c = a.clone()
    c[:, 2] *= 1e-3  # both thin
    _check(c, b)


def test_far_from_origin_is_the_same_as_near_it():
    """Translating a pair changes nothing: shapely on the pair near the origin is the oracle for the far pair."""
    a, b = _random(2000, 7, spread=20.0), _random(2000, 8, spread=20.0)
    ref = _shapely(a, b)
    for off in (1e4, 3e5):
        fa, fb = a.clone(), b.clone()
        fa[:, :2] += off
        fb[:, :2] += off
        scale = np.minimum((a[:, 2] * a[:, 3]).numpy(), (b[:, 2] * b[:, 3]).numpy())
        assert (np.abs(_ours(fa, fb) - ref) / scale).max() < 1e-9 * off / 100
        # float32 input: the same boxes as float64 (conversion is exact)
        np.testing.assert_array_equal(_ours(fa.float(), fb.float()), _ours(fa.float().double(), fb.float().double()))


@pytest.mark.parametrize("tilt", [0.0, 1e-12, 1e-9, 1e-6])
def test_edges_on_almost_the_same_line(tilt):
    """Integer grid boxes at quarter turns (nudged by ``tilt`` rad): neighbours share edge lines or nearly so."""
    g = torch.Generator().manual_seed(9)
    n = 3000
    xy = torch.randint(0, 12, (2, n, 2), generator=g).double()
    wh = torch.randint(1, 8, (2, n, 2), generator=g).double()
    t = torch.randint(0, 4, (2, n, 1), generator=g).double() * (math.pi / 2)
    t = t + tilt * torch.randn(2, n, 1, generator=g, dtype=torch.float64)
    a, b = torch.cat([xy[0], wh[0], t[0]], 1), torch.cat([xy[1], wh[1], t[1]], 1)
    assert (_shapely(a, b) > 0).sum() > 500
    _check(a, b, rtol=1e-9)


def test_float32_quarter_turns():
    """Angles k * pi / 2 rounded to float32 tilt boxes by ~4e-8 rad: same result as shapely on those boxes."""
    g = torch.Generator().manual_seed(10)
    n = 3000
    xy = torch.randint(0, 12, (2, n, 2), generator=g).float()
    wh = torch.randint(1, 8, (2, n, 2), generator=g).float()
    t = torch.randint(-4, 5, (2, n, 1), generator=g).float() * (math.pi / 2)
    a, b = torch.cat([xy[0], wh[0], t[0]], 1), torch.cat([xy[1], wh[1], t[1]], 1)
    _check(a, b, rtol=1e-9)


def test_grid_boxes_are_exact():
    """Axis-aligned boxes with integer corners: the overlap by integer arithmetic, bit for bit."""
    g = torch.Generator().manual_seed(11)
    n = 3000
    lo = torch.randint(0, 20, (2, n, 2), generator=g)
    size = torch.randint(0, 9, (2, n, 2), generator=g)
    hi = lo + size
    boxes = [torch.cat([(lo[k] + hi[k]).double() / 2, size[k].double(), torch.zeros(n, 1)], 1) for k in (0, 1)]
    want = (torch.minimum(hi[0], hi[1]) - torch.maximum(lo[0], lo[1])).clamp_min(0).prod(1).double()
    np.testing.assert_array_equal(_ours(*boxes), want.numpy())
    np.testing.assert_array_equal(_ours(boxes[1], boxes[0]), want.numpy())


def test_touching_and_disjoint_boxes_give_zero():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]] * 4, dtype=torch.float64)
    b = [[2.0, 0.0, 2.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0, 0.0], [5.0, 5.0, 2.0, 2.0, 0.3]]
    b = torch.tensor([*b, [1.0 + math.sqrt(2), 0.0, 2.0, 2.0, math.pi / 4]], dtype=torch.float64)
    np.testing.assert_allclose(_ours(a, b), 0.0, atol=1e-12)
    np.testing.assert_allclose(_ours(b, a), 0.0, atol=1e-12)


def test_zero_area_boxes_give_zero():
    a = _random(10, 12)
    b = a.clone()
    b[:5, 2] = 0.0
    b[5:, 2:4] = 0.0
    assert (_ours(a, b) == 0).all() and (_ours(b, a) == 0).all()


def _shifted_iou(a: torch.Tensor, b: torch.Tensor, dx: float) -> float:
    """Shapely IoU of box ``a`` and box ``b`` moved by ``dx`` along x (float64, one box each)."""
    bb = b.clone()
    bb[0, 0] += dx
    inter = float(_shapely(a, bb)[0])
    pa, pb = shapely.polygons(rbox_to_corners(torch.cat([a, bb])).numpy())
    return inter / (shapely.area(pa) + shapely.area(pb) - inter)


@pytest.mark.parametrize("thr", [0.1, 0.5, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_on_pairs_within_1e6_of_the_threshold(thr, dtype):
    """Pairs moved so that shapely's IoU is thr +- (1e-7 .. 1e-6): NMS keeps what the shapely greedy loop keeps."""
    g = torch.Generator().manual_seed(int(thr * 100))
    sides = []
    for _ in range(12):
        r = torch.rand(5, generator=g).tolist()
        a = torch.tensor([[30.0, 40.0, 20.0 + 10 * r[0], 12.0, 3 * r[1]]], dtype=dtype).double()
        b = a.clone()
        b[0, 2:] = torch.tensor([float(a[0, 2]) * (0.8 + 0.4 * r[3]), 12 * (0.8 + 0.4 * r[4]), 3 * r[1] + r[2] - 0.5])
        b = b.to(dtype).double()
        if _shifted_iou(a, b, 0.0) <= thr:
            continue
        lo, hi = 0.0, 40.0  # iou(lo) > thr >= iou(hi): bisect the shift where it crosses
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _shifted_iou(a, b, mid) > thr else (lo, mid)
        slope = (_shifted_iou(a, b, lo - 1e-3) - _shifted_iou(a, b, lo + 1e-3)) / 2e-3
        for eps in (-1e-6, -2e-7, 2e-7, 1e-6):  # shift so that the IoU moves by about eps
            bb = b.clone()
            bb[0, 0] += lo - eps / slope
            bb = bb.to(dtype)
            gap = _shifted_iou(a, bb.double(), 0.0) - thr
            if not 1e-8 < abs(gap) < 2e-6:
                continue  # float32 rounding of the shifted centre moved it too far
            rb = torch.cat([a.to(dtype), bb])
            sc = torch.tensor([0.9, 0.8], dtype=dtype)
            want = greedy_reference(rb, sc, thr)
            assert want == ([0] if gap > 0 else [0, 1])
            assert nms_rotated(rb, sc, thr).tolist() == want
            sides.append(gap > 0)
    assert len(sides) >= 20 and 5 <= sum(sides) <= len(sides) - 5
